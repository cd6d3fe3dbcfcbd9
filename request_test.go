package llmretry

import (
	"strings"
	"testing"
)

// controlIndex reads eight bytes at a time; it must find exactly what a
// byte-by-byte scan of controlByte finds: every byte value, at every
// position of a word and of the tail, after a tab (allowed, but it sends
// the scan to single bytes) or not.
func TestHeaderValueCheckFindsWhatTheByteTableFinds(t *testing.T) {
	byteByByte := func(v string) int {
		for i := 0; i < len(v); i++ {
			if controlByte[v[i]] {
				return i
			}
		}
		return -1
	}
	for _, prefix := range []string{"", "\t", "Bearer\t"} {
		for n := 1; n <= 19; n++ {
			for at := 0; at < n; at++ {
				for b := 0; b < 256; b++ {
					v := []byte(prefix + strings.Repeat("a", n))
					v[len(prefix)+at] = byte(b)
					if got, want := controlIndex(string(v)), byteByByte(string(v)); got != want {
						t.Fatalf("controlIndex(%q) = %d, want %d", v, got, want)
					}
				}
			}
		}
	}
	// Bytes at 0x80 and above are obs-text, allowed; they must not hide a
	// control byte after them in the same word.
	if got := controlIndex("\x80\xff\x80\xff\n"); got != 4 {
		t.Fatalf("got %d, want 4", got)
	}
}
