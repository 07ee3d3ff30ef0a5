package policy

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// The port goes out in network order and everything else in the host's,
// as struct policy_key holds them; a round trip gives the key back.
func TestKeyBinaryLayout(t *testing.T) {
	k := Key{Identity: 0x01020304, Port: 8080, Proto: ProtoTCP, Direction: Egress}
	b, err := k.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, KeySize)
	binary.NativeEndian.PutUint32(want, 0x01020304)
	want[4], want[5] = 0x1f, 0x90 // 8080
	want[6], want[7] = 6, 1
	if !bytes.Equal(b, want) {
		t.Fatalf("marshalled % x, want % x", b, want)
	}
	var back Key
	if err := back.UnmarshalBinary(b); err != nil || back != k {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	if err := back.UnmarshalBinary(b[:7]); err == nil {
		t.Error("a short key was accepted")
	}
}

func TestDirectionNames(t *testing.T) {
	if Ingress.String() != "ingress" || Egress.String() != "egress" || Direction(2).Valid() {
		t.Error("direction names or validity wrong")
	}
}
