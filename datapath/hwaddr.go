package datapath

import (
	"fmt"
	"net"
)

// String formats the address as aa:bb:cc:dd:ee:ff (empty for none).
func (a HardwareAddr) String() string { return net.HardwareAddr(a).String() }

// MarshalText makes the restore record and API output human-readable.
func (a HardwareAddr) MarshalText() ([]byte, error) {
	return []byte(a.String()), nil
}

// UnmarshalText accepts what MarshalText writes; empty means no address.
func (a *HardwareAddr) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*a = nil
		return nil
	}
	mac, err := net.ParseMAC(string(b))
	if err != nil {
		return fmt.Errorf("parse MAC %q: %w", b, err)
	}
	if len(mac) != 6 {
		return fmt.Errorf("parse MAC %q: want 6 bytes, got %d", b, len(mac))
	}
	*a = HardwareAddr(mac)
	return nil
}
