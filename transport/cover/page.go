package cover

import (
	"html"
	"strconv"
	"strings"
	"time"
)

// gen holds the state of one site being generated.
type gen struct {
	seed  []byte
	id    *rng // identity: kind, names, structure, wording
	tl    timeline
	kind  kind
	name  string // the site's name, plain text
	st    style
	nav   []navItem
	files memFS
}

// style is a site's markup and URL conventions.
type style struct {
	doctype, lang, indent string
	header, navc, main    string // class names
	divs                  bool   // <div class> instead of <header>, <nav>, …
	navList               bool   // nav as <ul>, else links with separators
	navSep                string
	css                   string // stylesheet path
	pretty                bool   // "/about/" rather than "/about.html"
	dateFmt               string
	description, iconLink bool
	logo                  string // path of an SVG logo, or ""
	favicon               bool
	yearRange             bool // footer "© 2019–2025" rather than "© 2025"
}

type navItem struct{ slug, title string }

var (
	doctypes  = []string{"<!DOCTYPE html>", "<!doctype html>", "<!DOCTYPE html>"}
	langs     = []string{"en", "en", "en-GB", "en-US"}
	indents   = []string{"", "  ", "  ", "    ", "\t"}
	classSets = [][3]string{{"site-header", "site-nav", "content"}, {"masthead", "menu", "main"}, {"top", "nav", "page"}, {"header", "navigation", "container"}, {"banner", "links", "wrap"}}
	navSeps   = []string{" | ", " · ", " / ", " "}
	cssPaths  = []string{"/style.css", "/css/style.css", "/assets/css/main.css", "/css/site.css", "/main.css", "/assets/style.css"}
	dateFmts  = []string{"January 2, 2006", "2 January 2006", "2006-01-02", "Jan 2, 2006", "2 Jan 2006"}
	logoPaths = []string{"/img/logo.svg", "/images/logo.svg", "/logo.svg", "/assets/img/mark.svg"}
)

func newGen(seed []byte, now time.Time) *gen {
	g := &gen{seed: seed, id: newRNG(seed, "identity", 0), tl: newTimeline(seed, now), files: memFS{}}
	r := newRNG(seed, "style", 0)
	cls := classSets[r.intn(len(classSets))]
	g.st = style{
		doctype: r.pick(doctypes), lang: r.pick(langs), indent: r.pick(indents),
		header: cls[0], navc: cls[1], main: cls[2],
		divs: r.chance(30), navList: r.chance(60), navSep: r.pick(navSeps),
		css: r.pick(cssPaths), pretty: r.chance(50), dateFmt: r.pick(dateFmts),
		description: r.chance(60), iconLink: r.chance(50), favicon: r.chance(85), yearRange: r.chance(50),
	}
	if r.chance(45) {
		g.st.logo = r.pick(logoPaths)
	}
	g.kind = kinds[g.id.intn(len(kinds))]
	return g
}

// url is the link to a page; slug "" is the home page.
func (g *gen) url(slug string) string {
	switch {
	case slug == "":
		return "/"
	case g.st.pretty:
		return "/" + slug + "/"
	}
	return "/" + slug + ".html"
}

// file is the file name of a page.
func (g *gen) file(slug string) string {
	switch {
	case slug == "":
		return "index.html"
	case g.st.pretty:
		return slug + "/index.html"
	}
	return slug + ".html"
}

func (g *gen) date(t time.Time) string { return t.Format(g.st.dateFmt) }

func (g *gen) put(name string, data []byte, mtime time.Time) {
	g.files[name] = &siteFile{data: data, mtime: mtime}
}

// esc escapes text for HTML.
func esc(s string) string { return html.EscapeString(s) }

// hw writes indented HTML.
type hw struct {
	b      strings.Builder
	indent string
	level  int
}

func (w *hw) line(s string) {
	for range w.level {
		w.b.WriteString(w.indent)
	}
	w.b.WriteString(s)
	w.b.WriteByte('\n')
}

func (w *hw) open(s string)  { w.line(s); w.level++ }
func (w *hw) close(s string) { w.level--; w.line(s) }

// elem is the opening and closing tag of a page region, semantic or a div.
func (g *gen) elem(tag, class string) (string, string) {
	if g.st.divs {
		return `<div class="` + class + `">`, "</div>"
	}
	if class == "" {
		return "<" + tag + ">", "</" + tag + ">"
	}
	return "<" + tag + ` class="` + class + `">`, "</" + tag + ">"
}

// page renders a page of the site: title is the page's own title ("" for
// the home page), active the slug of its nav entry, body its content.
func (g *gen) page(title, active, description string, body func(w *hw)) []byte {
	w := &hw{indent: g.st.indent}
	full := g.name
	if title != "" {
		full = title + " – " + g.name
	}
	w.b.WriteString(g.st.doctype + "\n")
	w.line(`<html lang="` + g.st.lang + `">`)
	w.open("<head>")
	w.line(`<meta charset="utf-8">`)
	w.line(`<meta name="viewport" content="width=device-width, initial-scale=1">`)
	w.line("<title>" + esc(full) + "</title>")
	if g.st.description && description != "" {
		w.line(`<meta name="description" content="` + esc(description) + `">`)
	}
	w.line(`<link rel="stylesheet" href="` + g.st.css + `">`)
	if g.st.iconLink && g.st.favicon {
		w.line(`<link rel="icon" href="/favicon.ico">`)
	}
	w.close("</head>")
	w.open("<body>")
	g.header(w, active)
	o, c := g.elem("main", g.st.main)
	w.open(o)
	if title != "" {
		w.line("<h1>" + esc(title) + "</h1>")
	}
	body(w)
	w.close(c)
	g.footer(w)
	w.close("</body>")
	w.line("</html>")
	return []byte(w.b.String())
}

func (g *gen) header(w *hw, active string) {
	o, c := g.elem("header", g.st.header)
	w.open(o)
	brand := esc(g.name)
	if g.st.logo != "" {
		brand = `<img src="` + g.st.logo + `" alt="" width="40" height="40"> ` + brand
	}
	w.line(`<a class="brand" href="/">` + brand + "</a>")
	no, nc := g.elem("nav", g.st.navc)
	w.open(no)
	if g.st.navList {
		w.open("<ul>")
	}
	var links []string
	for _, n := range g.nav {
		a := `<a href="` + g.url(n.slug) + `"`
		if n.slug == active {
			a += ` class="active"`
		}
		a += ">" + esc(n.title) + "</a>"
		if g.st.navList {
			w.line("<li>" + a + "</li>")
		}
		links = append(links, a)
	}
	if g.st.navList {
		w.close("</ul>")
	} else {
		w.line(strings.Join(links, g.st.navSep))
	}
	w.close(nc)
	w.close(c)
}

func (g *gen) footer(w *hw) {
	o, c := g.elem("footer", "footer")
	w.open(o)
	first, last := g.tl.at(0).Year(), g.tl.at(g.tl.last).Year()
	years := strconv.Itoa(last)
	if first != last && g.st.yearRange {
		years = strconv.Itoa(first) + "–" + years
	}
	w.line("<p>© " + years + " " + esc(g.name) + "</p>")
	w.close(c)
}

// para writes a paragraph of escaped text.
func (w *hw) para(text string) { w.line("<p>" + esc(text) + "</p>") }

// list writes a bulleted list of escaped items.
func (w *hw) list(items []string) {
	w.open("<ul>")
	for _, it := range items {
		w.line("<li>" + esc(it) + "</li>")
	}
	w.close("</ul>")
}
