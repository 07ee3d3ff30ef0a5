// Command tcprr measures TCP request/response round trips, IPv4 or IPv6:
// sockperf (Debian's 3.7) takes no IPv6 address, and bench/run needs the
// same measurement over both families.
//
//	tcprr serve ADDR:PORT            echo every 64-byte message back
//	tcprr ping ADDR:PORT SECONDS     send 64 bytes and wait for them back,
//	                                 one at a time, for SECONDS; print the
//	                                 round trip's p50 and p99 in microseconds
//	                                 and the count
//
// An address is host:port, [v6]:port for IPv6.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"time"
)

const msgSize = 64

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tcprr:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 2 && args[0] == "serve":
		return serve(args[1])
	case len(args) == 3 && args[0] == "ping":
		secs, err := strconv.ParseFloat(args[2], 64)
		if err != nil || secs <= 0 {
			return fmt.Errorf("seconds %q: want a positive number", args[2])
		}
		return ping(args[1], time.Duration(secs*float64(time.Second)))
	}
	return fmt.Errorf("usage: tcprr serve ADDR:PORT | tcprr ping ADDR:PORT SECONDS")
}

func serve(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			buf := make([]byte, msgSize)
			for {
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

func ping(addr string, d time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	buf := make([]byte, msgSize)
	var rtts []time.Duration
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		rtts = append(rtts, time.Since(start))
	}
	if len(rtts) == 0 {
		return fmt.Errorf("no round trip in %s", d)
	}
	slices.Sort(rtts)
	pct := func(p float64) float64 {
		return float64(rtts[int(p*float64(len(rtts)-1))].Nanoseconds()) / 1e3
	}
	fmt.Printf("%.3f %.3f %d\n", pct(0.50), pct(0.99), len(rtts))
	return nil
}
