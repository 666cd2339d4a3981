package cover

import "strconv"

func buildClub(g *gen) {
	r := g.id
	c := clubs[r.intn(len(clubs))]
	town := townName(r)
	g.name = r.pick([]string{town + " " + c.name, town + " & District " + c.name, "The " + town + " " + c.name})
	slots := map[string][]string{"town": {town}, "club": {c.name}, "meets": {c.meets}, "venue": {c.venue},
		"activity": c.activities, "season": seasons, "count": {strconv.Itoa(r.between(3, 16) * 5)},
		"year": {strconv.Itoa(g.tl.at(0).Year() - r.between(3, 60))}}
	meet := g.navPick([]string{"meetings", "programme", "calendar"}, []string{"Meetings", "Programme", "Calendar"})
	join := g.navPick([]string{"join", "membership", "members"}, []string{"Join", "Membership", "Join us"})
	about := g.navPick([]string{"about", "history", "the-club"}, []string{"About", "History", "The club"})
	g.nav = []navItem{{"", "Home"}, meet, join, about}
	news := g.entries(r.between(3, 6), func(er *rng, e *entry) {
		slots := withSeason(slots, e.when)
		e.title = er.fill(er.pick(clubNews), slots)
		e.text = []string{er.sentences(clubText, er.between(2, 3), slots)}
	})
	welcome := r.sentences(clubText, r.between(2, 4), slots)
	g.put("index.html", g.page("", "", welcome, func(w *hw) {
		w.line("<h1>" + esc(g.name) + "</h1>")
		w.para(welcome)
		g.newsList(w, r.pick([]string{"Club news", "News", "Latest"}), news, nil)
	}), g.tl.written(g.tl.last, "index"))
	g.put(g.file(meet.slug), g.page(meet.title, meet.slug, "", func(w *hw) {
		w.para(r.fill("We meet {meets} at {venue}.", slots))
		w.list(r.pickN(c.activities, r.between(2, len(c.activities))))
		w.para(r.sentences(clubText, 1, slots))
	}), g.tl.lastEdit("meetings", 3))
	g.textPage(join, "", []string{r.sentences(clubText, r.between(2, 3), slots), "Come along to any meeting and speak to the secretary."}, g.tl.lastEdit("join", 10))
	g.textPage(about, "", []string{r.sentences(clubText, r.between(2, 4), slots), r.sentences(clubText, 2, slots)}, g.tl.lastEdit("about", 20))
}
