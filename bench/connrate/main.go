// Command connrate measures new TCP connections per second, as netperf's
// TCP_CRR does (netperf is not in Debian's main archive): each connection
// is opened, carries one byte each way, and is closed.
//
//	connrate server -listen :5300
//	connrate client -addr 10.0.0.2:5300 -duration 5s -parallel 4
//
// The server closes first, so TIME_WAIT stays on its side and the client's
// ports are free again at once: the run measures the path, not the
// client's supply of ephemeral ports. The client prints one JSON line:
// {"connections":N,"errors":E,"seconds":S,"per_second":R}.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = serve(os.Args[2:])
	case "client":
		err = measure(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "connrate:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: connrate server -listen ADDR | connrate client -addr ADDR [-duration D] [-parallel N]")
	os.Exit(2)
}

func serve(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	listen := fs.String("listen", ":5300", "address to listen on")
	_ = fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			// Out of descriptors and the like: the client counts the
			// connections that fail, so keep serving.
			fmt.Fprintln(os.Stderr, "connrate: accept:", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go answer(conn)
	}
}

// answer echoes the client's byte and closes: the server's close comes
// first.
func answer(conn net.Conn) {
	defer conn.Close()
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return
	}
	_, _ = conn.Write(b[:])
}

type result struct {
	Connections uint64  `json:"connections"`
	Errors      uint64  `json:"errors"`
	Seconds     float64 `json:"seconds"`
	PerSecond   float64 `json:"per_second"`
	FirstError  string  `json:"first_error,omitempty"`
}

func measure(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	addr := fs.String("addr", "", "server address, host:port")
	duration := fs.Duration("duration", 5*time.Second, "how long to open connections")
	parallel := fs.Int("parallel", 4, "connections in flight at once")
	_ = fs.Parse(args)
	if *addr == "" || *parallel < 1 || *duration <= 0 {
		usage()
	}

	var done, failed atomic.Uint64
	var firstErr atomic.Value
	deadline := time.Now().Add(*duration)
	start := time.Now()
	var wg sync.WaitGroup
	for range *parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if err := oneConnection(*addr); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	r := result{Connections: done.Load(), Errors: failed.Load(), Seconds: elapsed}
	r.PerSecond = float64(r.Connections) / elapsed
	if e, ok := firstErr.Load().(string); ok {
		r.FirstError = e
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return err
	}
	if r.Connections == 0 {
		return errors.New("no connection succeeded")
	}
	return nil
}

// oneConnection opens a connection, sends a byte, reads it back and waits
// for the server's close.
func oneConnection(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	b := [1]byte{'x'}
	if _, err := conn.Write(b[:]); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if _, err := conn.Read(b[:]); !errors.Is(err, io.EOF) {
		return fmt.Errorf("the server did not close: %v", err)
	}
	return nil
}
