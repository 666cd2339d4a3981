package deploy

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

type composeFile struct {
	Name     string                    `json:"name"`
	Services map[string]composeService `json:"services"`
	Networks map[string]any            `json:"networks"`
	Volumes  map[string]any            `json:"volumes"`
}

type composeService struct {
	Build *struct {
		Context    string `json:"context"`
		Dockerfile string `json:"dockerfile"`
	} `json:"build"`
	Image           string            `json:"image"`
	Restart         string            `json:"restart"`
	Command         []string          `json:"command"`
	Environment     map[string]string `json:"environment"`
	Ports           []string          `json:"ports"`
	Volumes         []string          `json:"volumes"`
	ReadOnly        bool              `json:"read_only"`
	User            string            `json:"user"`
	CapDrop         []string          `json:"cap_drop"`
	CapAdd          []string          `json:"cap_add"`
	SecurityOpt     []string          `json:"security_opt"`
	Sysctls         map[string]string `json:"sysctls"`
	StopSignal      string            `json:"stop_signal"`
	StopGracePeriod string            `json:"stop_grace_period"`
	MemLimit        string            `json:"mem_limit"`
	Networks        []string          `json:"networks"`
}

// mounts maps each bind or volume mount's target to its source.
func (s composeService) mounts() map[string]string {
	out := map[string]string{}
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 {
			out[parts[1]] = parts[0]
		}
	}
	return out
}

type prometheusConfig struct {
	Global        map[string]string `json:"global"`
	RuleFiles     []string          `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `json:"job_name"`
		StaticConfigs []struct {
			Targets []string `json:"targets"`
		} `json:"static_configs"`
	} `json:"scrape_configs"`
}

// TestCompose checks that the compose stack builds the relay from this
// repository, mounts files that exist, publishes only the transports, and
// wires Prometheus and Grafana to each other and to the relay.
func TestCompose(t *testing.T) {
	var cf composeFile
	if err := decodeStrict(readYAML(t, "docker-compose.yml")[0], &cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for name, s := range cf.Services {
		if s.Build != nil {
			df := filepath.Join(s.Build.Context, s.Build.Dockerfile)
			if _, err := os.Stat(df); err != nil {
				t.Errorf("service %s: dockerfile %s: %v", name, df, err)
			}
			if _, err := os.Stat(filepath.Join(s.Build.Context, "go.mod")); err != nil {
				t.Errorf("service %s: build context %s is not the repository root", name, s.Build.Context)
			}
		}
		for target, src := range s.mounts() {
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(src); err != nil {
					t.Errorf("service %s: mount %s -> %s: %v", name, src, target, err)
				}
			} else if _, ok := cf.Volumes[src]; !ok {
				t.Errorf("service %s: named volume %s is not declared", name, src)
			}
		}
		for _, n := range s.Networks {
			if _, ok := cf.Networks[n]; !ok {
				t.Errorf("service %s: network %s is not declared", name, n)
			}
		}
	}

	relay, ok := cf.Services["relay"]
	if !ok {
		t.Fatal("no relay service")
	}
	cfg := loadRelayJSON(t, readFile(t, "relay.json"))
	metricsPort := cfg.port(t, "metrics_listen")
	if relay.mounts()["/etc/postern/relay.json"] != "./relay.json" {
		t.Errorf("relay.json is not mounted at /etc/postern/relay.json")
	}
	if relay.mounts()["/var/lib/postern"] == "" {
		t.Errorf("nothing is mounted at the data directory /var/lib/postern")
	}
	for _, want := range []string{"443:443/tcp", "443:443/udp"} {
		if !slices.Contains(relay.Ports, want) {
			t.Errorf("relay does not publish %s", want)
		}
	}
	for _, p := range relay.Ports {
		if strings.Contains(p, ":"+itoa(metricsPort)) {
			t.Errorf("relay publishes its metrics port on the host: %s", p)
		}
	}
	if !relay.ReadOnly || !slices.Equal(relay.CapDrop, []string{"ALL"}) || !strings.HasPrefix(relay.User, imageUID+":") {
		t.Errorf("relay must run read-only, with all capabilities dropped, as uid %s", imageUID)
	}

	// Prometheus: its config and rule file in one directory, scraping the
	// relay's metrics port on the compose network.
	prom := cf.Services["prometheus"]
	var configPath string
	for _, a := range prom.Command {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			configPath = v
		}
	}
	pm := prom.mounts()
	if pm[configPath] != "./prometheus/prometheus.yml" {
		t.Fatalf("prometheus --config.file=%s is not deploy/prometheus/prometheus.yml", configPath)
	}
	var pc prometheusConfig
	if err := decodeStrict(readYAML(t, "prometheus/prometheus.yml")[0], &pc); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	for _, rf := range pc.RuleFiles {
		inContainer := filepath.Join(filepath.Dir(configPath), rf)
		if pm[inContainer] != "./prometheus/"+rf {
			t.Errorf("rule file %s is not mounted at %s", rf, inContainer)
		}
	}
	scraped := false
	for _, sc := range pc.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			scraped = scraped || (sc.JobName == "postern-relay" && slices.Contains(st.Targets, "relay:"+itoa(metricsPort)))
		}
	}
	if !scraped {
		t.Errorf("prometheus.yml has no postern-relay job scraping relay:%d", metricsPort)
	}

	// Grafana: provisioning and dashboards mounted where the provider
	// looks, and the datasource the dashboard expects.
	gm := cf.Services["grafana"].mounts()
	if gm["/etc/grafana/provisioning"] != "./grafana/provisioning" {
		t.Errorf("grafana provisioning is not mounted")
	}
	var providers struct {
		APIVersion json1 `json:"apiVersion"`
		Providers  []struct {
			Name                  string `json:"name"`
			Folder                string `json:"folder"`
			Type                  string `json:"type"`
			DisableDeletion       bool   `json:"disableDeletion"`
			AllowUIUpdates        bool   `json:"allowUiUpdates"`
			UpdateIntervalSeconds int    `json:"updateIntervalSeconds"`
			Options               struct {
				Path                      string `json:"path"`
				FoldersFromFilesStructure bool   `json:"foldersFromFilesStructure"`
			} `json:"options"`
		} `json:"providers"`
	}
	if err := decodeStrict(readYAML(t, "grafana/provisioning/dashboards/postern.yml")[0], &providers); err != nil {
		t.Fatalf("dashboard provider: %v", err)
	}
	if len(providers.Providers) != 1 || gm[providers.Providers[0].Options.Path] != "./grafana/dashboards" {
		t.Errorf("the dashboard provider's path is not where compose mounts grafana/dashboards")
	}
	var datasources struct {
		APIVersion  json1 `json:"apiVersion"`
		Datasources []struct {
			Name      string            `json:"name"`
			UID       string            `json:"uid"`
			Type      string            `json:"type"`
			Access    string            `json:"access"`
			URL       string            `json:"url"`
			IsDefault bool              `json:"isDefault"`
			Editable  bool              `json:"editable"`
			JSONData  map[string]string `json:"jsonData"`
		} `json:"datasources"`
	}
	if err := decodeStrict(readYAML(t, "grafana/provisioning/datasources/prometheus.yml")[0], &datasources); err != nil {
		t.Fatalf("datasource: %v", err)
	}
	if len(datasources.Datasources) != 1 || datasources.Datasources[0].Type != "prometheus" ||
		datasources.Datasources[0].URL != "http://prometheus:9090" {
		t.Fatalf("want one Prometheus datasource at http://prometheus:9090")
	}
	d := loadDashboard(t)
	found := false
	for _, v := range d.Templating.List {
		found = found || (v.Name == "datasource" && v.Type == "datasource" && string(v.Query) == `"prometheus"`)
	}
	if !found {
		t.Errorf("the dashboard has no $datasource variable of type prometheus")
	}
}

// json1 is a provisioning apiVersion, which must be 1.
type json1 int

func (v *json1) UnmarshalJSON(b []byte) error {
	if string(b) != "1" {
		return os.ErrInvalid
	}
	*v = 1
	return nil
}

func itoa(n int) string { return strconv.Itoa(n) }
