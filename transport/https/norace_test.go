//go:build !race

package https

const raceEnabled = false
