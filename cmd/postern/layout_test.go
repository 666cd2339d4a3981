package main

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/postern/postern"

// deps lists the packages pkg links (go list -deps), module-relative for
// the module's own.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", module+"/"+pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	var ds []string
	for _, d := range strings.Fields(string(out)) {
		if d != module+"/"+pkg {
			ds = append(ds, strings.TrimPrefix(d, module+"/"))
		}
	}
	return ds
}

// TestLayout keeps the package graph the README draws: no package imports
// one above it.
func TestLayout(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	for _, tc := range []struct {
		pkg       string
		forbidden []string // prefixes of packages pkg may not link
	}{
		{"envelope", []string{module}},
		{"metrics", []string{module}},
		{"transport", []string{module}},
		{"transport/route", []string{"relay", "cmd", "transport/https", "transport/h3"}},
		{"transport/https", []string{"relay", "cmd", "transport/h3"}},
		{"transport/h3", []string{"relay", "cmd", "transport/https"}},
		{"relay", []string{"relay/", "transport", "cmd", "metrics"}},
		{"relay/store", []string{"relay/", "transport", "cmd", "metrics", "go.etcd.io/bbolt"}},
		{"relay/client", []string{"relay/server", "relay/store", "relay/link", "cmd", "metrics", "go.etcd.io/bbolt", "transport/https", "transport/h3"}},
		{"relay/server", []string{"relay/client", "relay/store/boltstore", "relay/link", "cmd", "metrics", "go.etcd.io/bbolt", "transport/https", "transport/h3"}},
		{"relay/link", []string{"relay/server", "relay/store", "cmd", "go.etcd.io/bbolt"}},
		{"relay/forward", []string{"relay", "transport/https", "transport/h3", "transport/route", "cmd", "metrics"}},
	} {
		t.Run(tc.pkg, func(t *testing.T) {
			for _, d := range deps(t, tc.pkg) {
				for _, f := range tc.forbidden {
					f = strings.TrimSuffix(f, "/")
					if d == f || strings.HasPrefix(d, f+"/") {
						t.Errorf("%s links %s", tc.pkg, d)
					}
				}
			}
		})
	}
	// bbolt is imported by one package only.
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, module+"/...").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, " ")
		if strings.Contains(" "+imports+" ", " go.etcd.io/bbolt ") && pkg != module+"/relay/store/boltstore" {
			t.Errorf("%s imports bbolt", pkg)
		}
	}
}
