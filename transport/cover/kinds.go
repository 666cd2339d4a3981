package cover

import "time"

// kind is a template for one kind of website.
type kind struct {
	name  string
	build func(g *gen)
}

var kinds = []kind{
	{"business", buildBusiness},
	{"blog", buildBlog},
	{"project", buildProject},
	{"docs", buildDocs},
	{"club", buildClub},
}

// build makes every file of the site.
func (g *gen) build() {
	g.kind.build(g)
	g.commonFiles()
}

// entry is one update of the site: a news item, post, release or report.
type entry struct {
	k     int
	when  time.Time
	title string
	text  []string // paragraphs
}

// entries returns the newest n updates, newest first, made by mk.
func (g *gen) entries(n int, mk func(r *rng, e *entry)) []entry {
	var out []entry
	for k := g.tl.last; k >= 0 && len(out) < n; k-- {
		e := entry{k: k, when: g.tl.at(k)}
		mk(newRNG(g.seed, "entry", k), &e)
		out = append(out, e)
	}
	return out
}

// pick chooses a nav entry: one of slugs with one of titles.
func (g *gen) navPick(slugs, titles []string) navItem {
	return navItem{g.id.pick(slugs), g.id.pick(titles)}
}

// textPage writes a page of paragraphs.
func (g *gen) textPage(n navItem, desc string, paras []string, mtime time.Time) {
	g.put(g.file(n.slug), g.page(n.title, n.slug, desc, func(w *hw) {
		for _, p := range paras {
			w.para(p)
		}
	}), mtime)
}

// newsList writes dated entries with their first paragraph.
func (g *gen) newsList(w *hw, heading string, es []entry, link func(e entry) string) {
	w.line("<h2>" + esc(heading) + "</h2>")
	for _, e := range es {
		title := esc(e.title)
		if link != nil {
			title = `<a href="` + link(e) + `">` + title + "</a>"
		}
		w.open(`<article>`)
		w.line("<h3>" + title + "</h3>")
		w.line(`<p class="date"><time datetime="` + e.when.Format("2006-01-02") + `">` + g.date(e.when) + "</time></p>")
		if len(e.text) > 0 {
			w.para(e.text[0])
		}
		w.close("</article>")
	}
}
