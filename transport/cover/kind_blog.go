package cover

import "strconv"

func buildBlog(g *gen) {
	r := g.id
	tp := topics[r.intn(len(topics))]
	first, last := r.pick(firstNames), r.pick(surnames)
	slots := map[string][]string{"first": {first}, "last": {last}, "topic": {tp.name}, "thing": tp.things, "place": tp.place,
		"season": seasons, "friend": friends, "town": {townName(r)}, "year": {strconv.Itoa(g.tl.at(0).Year())}}
	g.name = r.fill(r.pick(blogNames), slots)
	about := g.navPick([]string{"about", "about-me", "me"}, []string{"About", "About me", "Who"})
	archive := g.navPick([]string{"archive", "posts", "all-posts"}, []string{"Archive", "All posts", "Older posts"})
	g.nav = []navItem{{"", "Home"}, archive, about}
	prefix := r.pick([]string{"posts/", "blog/", "", "notes/"})
	dated := r.chance(40)
	posts := g.entries(r.between(5, 12), func(er *rng, e *entry) {
		slots := withSeason(slots, e.when)
		e.title = er.fill(er.pick(postTitles), slots)
		for range er.between(2, 6) {
			e.text = append(e.text, er.sentences(postText, er.between(2, 5), slots))
		}
	})
	seen := map[string]bool{}
	slug := func(e entry) string {
		s := prefix + slugify(e.title)
		if dated {
			s = e.when.Format("2006/01/") + slugify(e.title)
		}
		for seen[s] {
			s += "-" + strconv.Itoa(e.k)
		}
		seen[s] = true
		return s
	}
	slugs := map[int]string{}
	for _, e := range posts {
		slugs[e.k] = slug(e)
		g.put(g.file(slugs[e.k]), g.page(e.title, "", e.text[0], func(w *hw) {
			w.line(`<p class="date"><time datetime="` + e.when.Format("2006-01-02") + `">` + g.date(e.when) + "</time></p>")
			for _, p := range e.text {
				w.para(p)
			}
		}), g.tl.written(e.k, "post"))
	}
	link := func(e entry) string { return g.url(slugs[e.k]) }
	shown := posts[:min(len(posts), r.between(3, 6))]
	g.put("index.html", g.page("", "", "", func(w *hw) { g.newsList(w, r.pick([]string{"Recent posts", "Latest", "Posts"}), shown, link) }), g.tl.written(g.tl.last, "index"))
	g.put(g.file(archive.slug), g.page(archive.title, archive.slug, "", func(w *hw) {
		w.open("<ul>")
		for _, e := range posts {
			w.line(`<li><a href="` + link(e) + `">` + esc(e.title) + "</a> – " + g.date(e.when) + "</li>")
		}
		w.close("</ul>")
	}), g.tl.written(g.tl.last, "archive"))
	g.textPage(about, "", []string{r.sentences(aboutBlogText, r.between(2, 4), slots), r.sentences(postText, 2, slots)}, g.tl.lastEdit("about", 15))
}
