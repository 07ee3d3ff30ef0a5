package identity

import (
	"reflect"
	"testing"
)

func TestNotifierDeliversQueuedChangesInOrder(t *testing.T) {
	var n Notifier
	n.Queue(Change{ID: 300}) // before any subscriber: dropped
	var got []ID
	cancel := n.Add(func(c Change) { got = append(got, c.ID) })
	n.Queue(Change{ID: 301})
	n.Queue(Change{ID: 302, Freed: true})
	if len(got) != 0 {
		t.Fatal("Queue delivered before Deliver")
	}
	n.Deliver()
	if !reflect.DeepEqual(got, []ID{301, 302}) {
		t.Fatalf("delivered %v, want [301 302]", got)
	}
	cancel()
	n.Queue(Change{ID: 303})
	n.Deliver()
	if len(got) != 2 {
		t.Fatalf("delivered after cancel: %v", got)
	}
}
