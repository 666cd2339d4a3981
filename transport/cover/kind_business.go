package cover

import (
	"strconv"
	"strings"
)

func buildBusiness(g *gen) {
	r := g.id
	t := trades[r.intn(len(trades))]
	owner, town := person(r), townName(r)
	surname := owner[strings.IndexByte(owner, ' ')+1:]
	g.name = r.pick([]string{surname + " " + t.name, surname + " & " + r.pick(surnames), town + " " + t.name, "The " + town + " " + t.name})
	slots := map[string][]string{"town": {town}, "owner": {owner}, "place": {t.place}, "offer": t.offers,
		"street": {strconv.Itoa(r.between(2, 140)) + " " + r.pick(streets)}, "year": {strconv.Itoa(g.tl.at(0).Year() - r.intn(15))},
		"day": weekdays, "season": seasons}
	about := g.navPick([]string{"about", "about-us", "story"}, []string{"About", "About us", "Our story"})
	services := g.navPick([]string{"services", "prices", "what-we-do"}, []string{"Services", "Prices", "What we do"})
	contact := g.navPick([]string{"contact", "visit", "find-us"}, []string{"Contact", "Visit", "Find us"})
	g.nav = []navItem{{"", "Home"}, about, services, contact}
	news := g.entries(r.between(2, 4), func(er *rng, e *entry) {
		slots := withSeason(slots, e.when)
		e.title = er.fill(er.pick(businessNews), slots)
		e.text = []string{er.sentences(businessNewsText, er.between(1, 3), slots)}
	})
	intro := r.sentences(businessText, r.between(3, 6), slots)
	g.put("index.html", g.page("", "", intro, func(w *hw) {
		w.line("<h1>" + esc(capitalize(r.pick(t.offers))+" in "+town) + "</h1>")
		w.para(intro)
		w.list(r.pickN(t.offers, r.between(3, 6)))
		g.newsList(w, r.pick([]string{"News", "Latest news", "Updates"}), news, nil)
	}), g.tl.written(g.tl.last, "index"))
	g.textPage(about, "", []string{r.sentences(businessText, r.between(3, 5), slots), r.sentences(businessText, r.between(2, 4), slots)}, g.tl.lastEdit("about", 9))
	g.put(g.file(services.slug), g.page(services.title, services.slug, "", func(w *hw) {
		w.para(r.sentences(businessText, 2, slots))
		w.open("<dl>")
		for _, o := range r.pickN(t.offers, r.between(3, 6)) {
			w.line("<dt>" + esc(capitalize(o)) + "</dt>")
			w.line("<dd>" + r.pick([]string{"Usually ready in ", "About ", "Allow "}) + strconv.Itoa(r.between(2, 15)) + " days</dd>")
		}
		w.close("</dl>")
	}), g.tl.lastEdit("services", 5))
	hours := r.pickN(weekdays, r.between(3, 5))
	g.textPage(contact, "", []string{slots["street"][0] + ", " + town + ".", "Open " + strings.Join(hours, ", ") + ", " + strconv.Itoa(r.between(8, 10)) + " to " + strconv.Itoa(r.between(4, 6)) + ".", r.sentences(businessText, 2, slots)}, g.tl.lastEdit("contact", 12))
}
