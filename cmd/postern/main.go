// Command postern is the one Postern binary: relay, identities, mailboxes,
// sending and receiving, probing. Run `postern help` for the list.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one leaf of the command tree, such as "id new".
type command struct {
	name    string // space-separated path, e.g. "id new"
	args    string // synopsis of arguments after the flags
	summary string
	// setup declares flags on fs and returns the function that runs the
	// command after parsing.
	setup func(fs *flag.FlagSet, env *env) func(ctx context.Context, args []string) error
}

// env is what a command may touch, so tests can run commands in-process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	network        string // --network: the name route memory files what worked under
	// lane: dials for a connection beside one that carries (a send's
	// lanes), whose failures say more about the line than about the way
	// in: they leave route memory alone (dialOptions).
	lane bool
}

// errUsage marks an error caused by how the command was called; main
// prints the command's usage after it and exits with status 2.
var errUsage = errors.New("usage")

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

func commands() []command {
	return append([]command{
		idNewCmd(),
		idShowCmd(),
		mailboxCreateCmd(),
		mailboxShowCmd(),
		mailboxListCmd(),
		mailboxRotateCmd(),
		mailboxDeleteCmd(),
		contactAddCmd(),
		contactListCmd(),
		contactShowCmd(),
		cardShowCmd(),
		sendCmd(),
		recvCmd(),
		probeCmd(),
		relayServeCmd(),
		relayConfigCmd(),
		versionCmd(),
	}, relaysCmds()...)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
	stop()
	os.Exit(code)
}

// run dispatches args to a command and returns the exit status.
func run(ctx context.Context, args []string, e *env) int {
	cmds := commands()
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		args = append([]string{"version"}, args[1:]...)
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		if len(args) > 1 {
			// "postern help id new" is "postern id new --help".
			return run(ctx, append(args[1:], "--help"), e)
		}
		printOverview(e.stdout, cmds, "")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	// Find the longest command path matching the leading words.
	var best *command
	bestLen := 0
	for i := range cmds {
		words := strings.Fields(cmds[i].name)
		if len(words) <= len(args) && len(words) > bestLen && strings.Join(args[:len(words)], " ") == cmds[i].name {
			best, bestLen = &cmds[i], len(words)
		}
	}
	if best == nil {
		// A group prefix such as "postern id" lists its subcommands.
		prefix := args[0]
		for _, c := range cmds {
			if strings.HasPrefix(c.name, prefix+" ") {
				printOverview(e.stderr, cmds, prefix)
				if len(args) > 1 && args[1] != "--help" && args[1] != "-h" {
					fmt.Fprintf(e.stderr, "\npostern %s: unknown command %q\n", prefix, args[1])
					return 2
				}
				if len(args) > 1 {
					return 0
				}
				return 2
			}
		}
		fmt.Fprintf(e.stderr, "postern: unknown command %q; run `postern help` for the list\n", args[0])
		return 2
	}
	fs := flag.NewFlagSet("postern "+best.name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	runFn := best.setup(fs, e)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: postern %s [flags]%s\n\n%s\n", best.name, prefixSpace(best.args), best.summary)
		if hasFlags(fs) {
			fmt.Fprintf(w, "\nflags:\n")
			fs.PrintDefaults()
		}
	}
	rest := args[bestLen:]
	for _, a := range rest {
		if a == "-h" || a == "--help" || a == "-help" {
			fs.SetOutput(e.stdout)
			fs.Usage()
			return 0
		}
	}
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	if err := runFn(ctx, fs.Args()); err != nil {
		fmt.Fprintf(e.stderr, "postern %s: %v\n", best.name, err)
		if errors.Is(err, errUsage) {
			fmt.Fprintf(e.stderr, "run `postern %s --help` for usage\n", best.name)
			return 2
		}
		return 1
	}
	return 0
}

func prefixSpace(s string) string {
	if s == "" {
		return ""
	}
	return " " + s
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

func printOverview(w io.Writer, cmds []command, prefix string) {
	fmt.Fprintln(w, "Postern: sealed-sender messaging through censorship-resistant relays.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "usage: postern COMMAND [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	for _, c := range cmds {
		if prefix != "" && !strings.HasPrefix(c.name, prefix+" ") {
			continue
		}
		fmt.Fprintf(w, "  %-22s %s\n", c.name, firstLine(c.summary))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run `postern COMMAND --help` for a command's flags.")
}

// firstLine is a summary's first sentence, which may span lines, for the
// command overview.
func firstLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if i := strings.Index(s, ". "); i >= 0 {
		return s[:i+1]
	}
	return s
}
