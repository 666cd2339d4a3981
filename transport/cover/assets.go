package cover

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// commonFiles adds what every kind of site has: stylesheet, favicon, logo,
// robots.txt and the 404 page.
func (g *gen) commonFiles() {
	r := newRNG(g.seed, "assets", 0)
	g.put(strings.TrimPrefix(g.st.css, "/"), g.stylesheet(r), g.tl.lastEdit("css", 12))
	if g.st.favicon {
		g.put("favicon.ico", favicon(r, g.colours()), g.tl.written(0, "favicon"))
	}
	if g.st.logo != "" {
		g.put(strings.TrimPrefix(g.st.logo, "/"), logo(r, g.colours()), g.tl.lastEdit("logo", 40))
	}
	if robots := r.pick(robotsFiles); robots != "" {
		g.put("robots.txt", []byte(robots), g.tl.written(0, "robots"))
	}
	g.put(notFoundPage, g.notFound(r), g.tl.lastEdit("404", 30))
}

var robotsFiles = []string{
	"User-agent: *\nDisallow:\n",
	"User-agent: *\nAllow: /\n",
	"User-agent: *\nDisallow:\n\n",
	"# Allow all\nUser-agent: *\nDisallow:\n",
	"",
}

var notFoundTitles = []string{"Page not found", "Not found", "404 – Page not found", "Nothing here", "404"}

var notFoundText = []string{
	"Sorry, the page you asked for does not exist.",
	"The page you were looking for is not here. It may have moved.",
	"We could not find that page.",
	"That page does not exist, or no longer does.",
}

func (g *gen) notFound(r *rng) []byte {
	title, text := r.pick(notFoundTitles), r.pick(notFoundText)
	home := r.pick([]string{"Back to the home page", "Go to the start page", "Home"})
	if r.chance(35) { // a bare page, as many servers' error pages are
		return []byte(g.st.doctype + "\n<html lang=\"" + g.st.lang + "\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + esc(title+" – "+g.name) + "</title>\n</head>\n<body>\n<h1>" + esc(title) + "</h1>\n<p>" + esc(text) + " <a href=\"/\">" + esc(home) + "</a>.</p>\n</body>\n</html>\n")
	}
	return g.page(title, "", "", func(w *hw) {
		w.para(text)
		w.line(`<p><a href="/">` + esc(home) + "</a></p>")
	})
}

// palette is background, text, accent, muted, border.
type palette [5]string

var palettes = []palette{
	{"#fdfcf9", "#222222", "#8a3b12", "#6b6b6b", "#e4e0d8"},
	{"#ffffff", "#1d2733", "#2a6f97", "#5c6b7a", "#dde3ea"},
	{"#f7f7f2", "#2b2b2b", "#4a7c59", "#6f6f6f", "#deded3"},
	{"#fffdf7", "#333333", "#b5651d", "#777777", "#eee8da"},
	{"#fafafa", "#111111", "#5b3a8c", "#666666", "#e2e2e2"},
	{"#f4f1ea", "#2e2a25", "#9c2f2f", "#6e665c", "#ddd5c6"},
	{"#ffffff", "#24292e", "#0b7285", "#586069", "#e1e4e8"},
	{"#fcfaf5", "#30302e", "#6a7f16", "#75746f", "#e7e3d7"},
	{"#111417", "#e6e6e3", "#e0a458", "#9aa0a6", "#2a2f35"},
	{"#fbfbfd", "#1f1f2e", "#c2185b", "#6c6c80", "#e6e6ef"},
}

var fontStacks = []string{
	`Georgia, "Times New Roman", serif`,
	`-apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, Helvetica, Arial, sans-serif`,
	`"Helvetica Neue", Helvetica, Arial, sans-serif`,
	`system-ui, sans-serif`,
	`Palatino, "Palatino Linotype", "Book Antiqua", serif`,
	`Charter, "Bitstream Charter", "Sitka Text", Cambria, serif`,
	`Verdana, Geneva, sans-serif`,
}

// palette is the site's colours: the same for every asset of a site.
func (g *gen) colours() palette { return palettes[newRNG(g.seed, "palette", 0).intn(len(palettes))] }

// stylesheet writes the site's CSS: its palette and fonts, a subset of
// optional rules, expanded or minified.
func (g *gen) stylesheet(r *rng) []byte {
	p := g.colours()
	font, head := r.pick(fontStacks), r.pick(fontStacks)
	width := strconv.Itoa(r.between(34, 62)) + "rem"
	type rule struct{ sel, decl string }
	rules := []rule{
		{"html", "font-size: " + strconv.Itoa(r.between(15, 18)) + "px"},
		{"body", "margin: 0 auto; max-width: " + width + "; padding: " + r.pick([]string{"0 1rem", "1rem 1.5rem", "0 20px", "2rem 1rem"}) + "; background: " + p[0] + "; color: " + p[1] + "; font-family: " + font + "; line-height: " + r.pick([]string{"1.5", "1.6", "1.65", "1.45"})},
		{"a", "color: " + p[2] + r.pick([]string{"", "; text-decoration: none", "; text-underline-offset: 2px"})},
		{"h1, h2, h3", "font-family: " + head + "; line-height: 1.25" + r.pick([]string{"", "; font-weight: 600", "; letter-spacing: -0.01em"})},
		{"." + g.st.header, "display: flex; flex-wrap: wrap; justify-content: space-between; align-items: center; padding: 1rem 0; border-bottom: 1px solid " + p[4]},
		{"." + g.st.navc + " a", "margin-left: " + r.pick([]string{"1rem", "0.75em", "1.2em"})},
		{"." + g.st.navc + " ul", "list-style: none; margin: 0; padding: 0; display: flex"},
		{"a.active", r.pick([]string{"font-weight: bold", "text-decoration: underline", "color: " + p[1]})},
		{".brand", "font-weight: bold; font-size: 1.2rem; color: " + p[1] + "; text-decoration: none"},
		{".date", "color: " + p[3] + "; font-size: 0.9em"},
		{".footer", "margin-top: 3rem; padding: 1rem 0; border-top: 1px solid " + p[4] + "; color: " + p[3] + "; font-size: 0.9em"},
	}
	optional := []rule{
		{"pre", "background: " + p[4] + "; padding: 0.75rem 1rem; overflow-x: auto"},
		{"code", `font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.92em`},
		{"article", "margin-bottom: 2rem"},
		{"dt", "font-weight: bold; margin-top: 0.75rem"},
		{"img", "max-width: 100%; height: auto; vertical-align: middle"},
		{".lead", "font-size: 1.2em; color: " + p[3]},
		{"@media (max-width: 600px)", "body { padding: 0 0.75rem; }"},
		{"::selection", "background: " + p[2] + "; color: " + p[0]},
		{"blockquote", "margin-left: 0; padding-left: 1rem; border-left: 3px solid " + p[4]},
	}
	for _, i := range r.perm(len(optional))[:r.between(3, len(optional))] {
		rules = append(rules, optional[i])
	}
	var b strings.Builder
	minified := r.chance(25)
	for _, ru := range rules {
		if minified {
			b.WriteString(ru.sel + "{" + strings.ReplaceAll(strings.ReplaceAll(ru.decl, ": ", ":"), "; ", ";") + "}")
			continue
		}
		b.WriteString(ru.sel + " {\n  " + strings.ReplaceAll(ru.decl, "; ", ";\n  ") + ";\n}\n\n")
	}
	return []byte(strings.TrimSpace(b.String()) + "\n")
}

// logo draws a simple mark in the site's colours as SVG.
func logo(r *rng, p palette) []byte {
	shapes := []string{
		`<circle cx="20" cy="20" r="18" fill="%s"/><circle cx="20" cy="20" r="%d" fill="%s"/>`,
		`<rect x="2" y="2" width="36" height="36" rx="8" fill="%s"/><rect x="12" y="12" width="%d" height="16" fill="%s"/>`,
		`<path d="M20 2 L38 20 L20 38 L2 20 Z" fill="%s"/><circle cx="20" cy="20" r="%d" fill="%s"/>`,
	}
	body := fmt.Sprintf(shapes[r.intn(len(shapes))], p[2], r.between(5, 12), p[0])
	return []byte(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 40 40" width="40" height="40">` + body + "</svg>\n")
}

// favicon draws a 16×16 and/or 32×32 icon in the site's colours as a
// Windows ICO of 32-bit BMPs, as image editors write them.
func favicon(r *rng, p palette) []byte {
	sizes := [][]int{{16}, {32}, {16, 32}}[r.intn(3)]
	shape := r.intn(3)
	fg, bg := rgb(p[2]), rgb(p[0])
	var imgs [][]byte
	for _, n := range sizes {
		imgs = append(imgs, iconBMP(n, shape, fg, bg))
	}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, [3]uint16{0, 1, uint16(len(sizes))})
	off := 6 + 16*len(sizes)
	for i, n := range sizes {
		binary.Write(&b, binary.LittleEndian, struct {
			W, H, Colors, Reserved uint8
			Planes, BPP            uint16
			Size, Offset           uint32
		}{uint8(n), uint8(n), 0, 0, 1, 32, uint32(len(imgs[i])), uint32(off)})
		off += len(imgs[i])
	}
	for _, img := range imgs {
		b.Write(img)
	}
	return b.Bytes()
}

// iconBMP is one ICO image: a BITMAPINFOHEADER with doubled height,
// bottom-up BGRA pixels and an all-zero AND mask.
func iconBMP(n, shape int, fg, bg [3]byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, struct {
		Size          uint32
		W, H          int32
		Planes, BPP   uint16
		Compression   uint32
		ImageSize     uint32
		XPPM, YPPM    int32
		Used, Importa uint32
	}{40, int32(n), int32(2 * n), 1, 32, 0, uint32(n * n * 4), 0, 0, 0, 0})
	c := float64(n-1) / 2
	for y := n - 1; y >= 0; y-- {
		for x := range n {
			dx, dy := float64(x)-c, float64(y)-c
			var in bool
			switch shape {
			case 0:
				in = dx*dx+dy*dy <= c*c+c
			case 1:
				in = x > 0 && y > 0 && x < n-1 && y < n-1
			default:
				in = abs(dx)+abs(dy) <= c+0.5
			}
			col, alpha := fg, byte(255)
			if !in {
				col, alpha = bg, 0
			}
			b.Write([]byte{col[2], col[1], col[0], alpha})
		}
	}
	b.Write(make([]byte, ((n+31)/32)*4*n))
	return b.Bytes()
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

// rgb parses "#rrggbb".
func rgb(hex string) [3]byte {
	v, _ := strconv.ParseUint(strings.TrimPrefix(hex, "#"), 16, 32)
	return [3]byte{byte(v >> 16), byte(v >> 8), byte(v)}
}
