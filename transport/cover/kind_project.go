package cover

import (
	"strconv"
	"strings"
)

// software is what a project page and a documentation site share.
type software struct {
	p       project
	name    string
	slots   map[string][]string
	version func(k int) string
	install []string
}

func newSoftware(g *gen) *software {
	r := g.id
	s := &software{p: projects[r.intn(len(projects))]}
	s.name = r.pick(projectHeads) + r.pick(projectTails)
	s.slots = map[string][]string{"name": {s.name}, "desc": {s.p.desc}, "obj": {s.p.obj}, "lang": {s.p.lang},
		"flag": s.p.flags, "year": {strconv.Itoa(g.tl.at(0).Year())}}
	major, minor0, per, v := r.intn(2), r.intn(5), r.between(3, 6), r.pick([]string{"", "v"})
	s.version = func(k int) string {
		return v + strconv.Itoa(major) + "." + strconv.Itoa(minor0+k/per) + "." + strconv.Itoa(k%per)
	}
	switch s.p.lang {
	case "Python":
		s.install = []string{"pip install " + s.name}
	case "Rust":
		s.install = []string{"cargo install " + s.name}
	case "C":
		s.install = []string{"tar xzf " + s.name + "-" + strings.TrimPrefix(s.version(g.tl.last), "v") + ".tar.gz", "cd " + s.name + "-" + strings.TrimPrefix(s.version(g.tl.last), "v"), "./configure && make", "sudo make install"}
	default:
		s.install = []string{"tar xzf " + s.name + "-linux-amd64.tar.gz", "sudo cp " + s.name + " /usr/local/bin/"}
	}
	return s
}

// releases are the newest n releases, newest first.
func (s *software) releases(g *gen, n int) []entry {
	return g.entries(n, func(er *rng, e *entry) {
		e.title = s.version(e.k)
		for _, c := range er.pickN(changeText, er.between(1, 4)) {
			e.text = append(e.text, er.fill(c, s.slots))
		}
	})
}

// changelog writes releases as a list of versions with their changes.
func (s *software) changelog(g *gen, w *hw, es []entry) {
	for _, e := range es {
		w.line("<h2>" + esc(e.title) + ` <small><time datetime="` + e.when.Format("2006-01-02") + `">` + g.date(e.when) + "</time></small></h2>")
		w.list(e.text)
	}
}

// code writes a block of shell commands.
func code(w *hw, lines []string) {
	w.line("<pre><code>" + esc(strings.Join(lines, "\n")) + "</code></pre>")
}

func buildProject(g *gen) {
	r := g.id
	s := newSoftware(g)
	g.name = s.name
	install := g.navPick([]string{"install", "download", "get"}, []string{"Install", "Download", "Get it"})
	usage := g.navPick([]string{"usage", "guide", "manual"}, []string{"Usage", "Guide", "Manual"})
	changes := g.navPick([]string{"changelog", "changes", "news"}, []string{"Changelog", "Changes", "News"})
	g.nav = []navItem{{"", r.pick([]string{"Home", "About", "Overview"})}, install, usage, changes}
	rel := s.releases(g, r.between(4, 10))
	desc := capitalize(s.p.desc) + "."
	g.put("index.html", g.page("", "", desc, func(w *hw) {
		w.line("<h1>" + esc(s.name) + "</h1>")
		w.line(`<p class="lead">` + esc(desc) + "</p>")
		w.para(r.sentences(projectText, r.between(2, 4), s.slots))
		code(w, []string{"$ " + s.name + " " + s.p.args})
		w.line(`<p>Latest version: <a href="` + g.url(changes.slug) + `">` + esc(rel[0].title) + "</a> (" + g.date(rel[0].when) + ")</p>")
	}), g.tl.written(g.tl.last, "index"))
	g.put(g.file(install.slug), g.page(install.title, install.slug, "", func(w *hw) {
		w.para(r.fill("{Name} is written in {lang}.", s.slots))
		code(w, s.install)
		w.para(r.sentences(projectText, 1, s.slots))
	}), g.tl.written(g.tl.last, "install"))
	g.put(g.file(usage.slug), g.page(usage.title, usage.slug, "", func(w *hw) { s.options(r, w) }), g.tl.lastEdit("usage", 4))
	g.put(g.file(changes.slug), g.page(changes.title, changes.slug, "", func(w *hw) { s.changelog(g, w, rel) }), g.tl.written(g.tl.last, "changes"))
}

// options writes a usage synopsis and the command-line options.
func (s *software) options(r *rng, w *hw) {
	code(w, []string{s.name + " [options] " + strings.Fields(s.p.args)[0] + " ..."})
	w.open("<dl>")
	for _, f := range r.pickN(s.p.flags, len(s.p.flags)) {
		w.line("<dt><code>--" + esc(f) + "</code></dt>")
		w.line("<dd>" + esc(r.pick([]string{"Set the ", "Change the ", "Control the ", "Choose the "})+strings.ReplaceAll(f, "-", " ")+r.pick([]string{".", " used for all " + s.p.obj + ".", " (see below)."})) + "</dd>")
	}
	w.close("</dl>")
}

func buildDocs(g *gen) {
	r := g.id
	s := newSoftware(g)
	g.name = s.name + " " + r.pick([]string{"documentation", "manual", "handbook", "docs"})
	start := g.navPick([]string{"getting-started", "start", "quickstart"}, []string{"Getting started", "Quick start", "First steps"})
	opts := g.navPick([]string{"options", "reference", "cli"}, []string{"Options", "Reference", "Command line"})
	faq := g.navPick([]string{"faq", "questions", "help"}, []string{"FAQ", "Questions", "Help"})
	changes := g.navPick([]string{"changelog", "release-notes", "history"}, []string{"Changelog", "Release notes", "History"})
	g.nav = []navItem{{"", "Overview"}, start, opts, faq, changes}
	rel := s.releases(g, r.between(5, 12))
	g.put("index.html", g.page("", "", capitalize(s.p.desc)+".", func(w *hw) {
		w.line("<h1>" + esc(g.name) + "</h1>")
		w.para(r.sentences(projectText, r.between(3, 5), s.slots))
		w.para("This manual describes version " + rel[0].title + ".")
		w.open("<ol>")
		for _, n := range g.nav[1:] {
			w.line(`<li><a href="` + g.url(n.slug) + `">` + esc(n.title) + "</a></li>")
		}
		w.close("</ol>")
	}), g.tl.written(g.tl.last, "index"))
	g.put(g.file(start.slug), g.page(start.title, start.slug, "", func(w *hw) {
		w.para("Install " + s.name + ":")
		code(w, s.install)
		w.para("Then try it on a few " + s.p.obj + ":")
		code(w, []string{"$ " + s.name + " " + s.p.args})
	}), g.tl.lastEdit("start", 3))
	g.put(g.file(opts.slug), g.page(opts.title, opts.slug, "", func(w *hw) { s.options(r, w) }), g.tl.lastEdit("options", 3))
	g.put(g.file(faq.slug), g.page(faq.title, faq.slug, "", func(w *hw) {
		for _, q := range r.pickN([]string{"Does it change my {obj}?", "Which platforms are supported?", "How do I report a bug?", "Is there a graphical version?", "Why is --{flag} not the default?"}, r.between(2, 4)) {
			w.line("<h2>" + esc(r.fill(q, s.slots)) + "</h2>")
			w.para(r.sentences(projectText, r.between(1, 2), s.slots))
		}
	}), g.tl.lastEdit("faq", 8))
	g.put(g.file(changes.slug), g.page(changes.title, changes.slug, "", func(w *hw) { s.changelog(g, w, rel) }), g.tl.written(g.tl.last, "changes"))
}
