//go:build race

package proxy

// raceEnabled: the race detector's instrumentation allocates on its own,
// so allocation counts are checked without it.
const raceEnabled = true
