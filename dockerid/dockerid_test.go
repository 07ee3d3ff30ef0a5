package dockerid

import "testing"

func TestShort(t *testing.T) {
	long := "0123456789abcdef0123"
	if got := Short(long); got != "0123456789ab" {
		t.Errorf("Short(%q) = %q", long, got)
	}
	if got := Short("abc"); got != "abc" {
		t.Errorf("a short ID changed: %q", got)
	}
}
