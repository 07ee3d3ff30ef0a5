package datapath

import (
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// BenchmarkPingPong measures TCP request/response round trips between two
// network namespaces over a bare veth pair and over two ebpfnet endpoints
// of one network (from_container, the node programs by tail call,
// bpf_redirect_peer), the same way on both: blocking sockets on OS
// threads locked in their namespace, client and server pinned to one CPU
// (as bench/run's "latency on one CPU": a cross-CPU wake-up on a VM costs
// more than the datapath). b.N is the number of round trips per setup,
// taken in alternating chunks so that noise hits both alike.
//
// It reports the p50 and p99 of each in microseconds, their ratio (ebpfnet
// over veth, the figure to compare across changes), and bpf-ns/pkt: what
// the programs themselves cost per packet (from_container including the
// tail-called node programs), from the kernel's BPF run-time statistics in
// a separate phase, as those add a clock read per run.
//
//	go test -run '^$' -bench PingPong -benchtime 40000x ./datapath/
func BenchmarkPingPong(b *testing.B) {
	e := newTestEnv(b)
	n := e.network(1)
	epA, epB := e.endpoint(n, 10), e.endpoint(n, 11)
	nsA, nsB := e.container(epA), e.container(epB)
	vethA, vethB, vethAddr := e.bareVethPair()

	cpu := runtime.NumCPU() - 1
	ebpfnet := startPingPong(b, nsA, nsB, epB.IPv4.Addr(), cpu)
	veth := startPingPong(b, vethA, vethB, vethAddr, cpu)
	const warmup, chunk = 500, 1000
	ebpfnet.run(b, warmup)
	veth.run(b, warmup)

	var sv, se []time.Duration
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		k := min(chunk, b.N-done)
		if round%2 == 0 {
			sv = append(sv, veth.run(b, k)...)
			se = append(se, ebpfnet.run(b, k)...)
		} else {
			se = append(se, ebpfnet.run(b, k)...)
			sv = append(sv, veth.run(b, k)...)
		}
		done += k
	}
	b.StopTimer()
	pv50, pv99 := percentiles(sv)
	pe50, pe99 := percentiles(se)
	b.ReportMetric(pv50, "veth-p50-us")
	b.ReportMetric(pv99, "veth-p99-us")
	b.ReportMetric(pe50, "ebpfnet-p50-us")
	b.ReportMetric(pe99, "ebpfnet-p99-us")
	b.ReportMetric(pe50/pv50, "ratio-p50")
	b.ReportMetric(pe99/pv99, "ratio-p99")
	b.ReportMetric(0, "ns/op")

	if ns, ok := bpfNsPerPacket(b, ebpfnet, min(b.N, 20000), epA, epB); ok {
		b.ReportMetric(ns, "bpf-ns/pkt")
	}
	veth.stop()
	ebpfnet.stop()
}

// bareVethPair makes two namespaces joined by a plain veth pair, the
// reference without any program, and returns them with the server's
// address. Private namespaces: the addresses never meet the host's routes.
func (e *testEnv) bareVethPair() (client, server string, serverAddr netip.Addr) {
	e.t.Helper()
	client, server = "ebv-"+e.suffix+"-c", "ebv-"+e.suffix+"-s"
	for _, ns := range []string{client, server} {
		run(e.t, "ip", "netns", "add", ns)
		e.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		run(e.t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(e.t, "ip", "-n", client, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", server)
	for i, ns := range []string{client, server} {
		run(e.t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.99.0.%d/24", i+1), "dev", "eth0")
		run(e.t, "ip", "-n", ns, "link", "set", "eth0", "up")
	}
	return client, server, netip.MustParseAddr("10.99.0.2")
}

// pingPong is one TCP connection between a client thread in one namespace
// and an echo server thread in another.
type pingPong struct {
	req      chan int
	resp     chan []time.Duration
	errs     chan error
	stopOnce sync.Once
}

const pingPongPort = 7777

// startPingPong starts the echo server in serverNS and a client in
// clientNS connected to it, both on OS threads of their own pinned to cpu.
// The threads are never unlocked, so Go ends them with their goroutines
// instead of reusing a thread in another namespace.
func startPingPong(b *testing.B, clientNS, serverNS string, server netip.Addr, cpu int) *pingPong {
	b.Helper()
	p := &pingPong{req: make(chan int), resp: make(chan []time.Duration), errs: make(chan error, 2)}
	// A benchmark that fails half-way stops its client (and so the
	// server) all the same.
	b.Cleanup(p.stop)
	ready := make(chan error, 1)
	go func() {
		err := enterNetnsForever(serverNS, cpu)
		var lfd, cfd int
		if err == nil {
			lfd, err = tcpListen(server)
		}
		ready <- err
		if err != nil {
			return
		}
		defer unix.Close(lfd)
		if cfd, _, err = unix.Accept(lfd); err != nil {
			p.errs <- fmt.Errorf("accept: %w", err)
			return
		}
		defer unix.Close(cfd)
		_ = unix.SetsockoptInt(cfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		buf := make([]byte, 64)
		for {
			n, err := unix.Read(cfd, buf)
			if err != nil || n <= 0 {
				return
			}
			if _, err := unix.Write(cfd, buf[:n]); err != nil {
				return
			}
		}
	}()
	if err := <-ready; err != nil {
		b.Fatalf("server in %s: %v", serverNS, err)
	}
	go func() {
		if err := enterNetnsForever(clientNS, cpu); err != nil {
			p.errs <- err
			return
		}
		fd, err := tcpDial(server)
		if err != nil {
			p.errs <- err
			return
		}
		defer unix.Close(fd)
		buf := make([]byte, 64)
		for k := range p.req {
			samples := make([]time.Duration, 0, k)
			for i := 0; i < k; i++ {
				start := time.Now()
				if _, err := unix.Write(fd, buf); err != nil {
					p.errs <- fmt.Errorf("write: %w", err)
					return
				}
				for got := 0; got < len(buf); {
					n, err := unix.Read(fd, buf[got:])
					if err != nil || n <= 0 {
						p.errs <- fmt.Errorf("read: %d, %v", n, err)
						return
					}
					got += n
				}
				samples = append(samples, time.Since(start))
			}
			p.resp <- samples
		}
	}()
	return p
}

// run makes k round trips and returns their durations.
func (p *pingPong) run(b *testing.B, k int) []time.Duration {
	select {
	case p.req <- k:
	case err := <-p.errs:
		b.Fatal(err)
	}
	select {
	case s := <-p.resp:
		return s
	case err := <-p.errs:
		b.Fatal(err)
	case <-time.After(30 * time.Second):
		b.Fatal("ping-pong stalled")
	}
	return nil
}

// stop ends the client, whose closed connection ends the server. Stopping
// twice is fine.
func (p *pingPong) stop() { p.stopOnce.Do(func() { close(p.req) }) }

// enterNetnsForever locks the calling goroutine to its thread for good,
// moves the thread into the named namespace and pins it to cpu.
func enterNetnsForever(name string, cpu int) error {
	runtime.LockOSThread()
	h, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin to CPU %d: %w", cpu, err)
	}
	return nil
}

func sockaddr(a netip.Addr) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Port: pingPongPort, Addr: a.As4()}
}

func tcpListen(a netip.Addr) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, sockaddr(a)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %v: %w", a, err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func tcpDial(a netip.Addr) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	tv := unix.Timeval{Sec: 5}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if err := unix.Connect(fd, sockaddr(a)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %v: %w", a, err)
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	return fd, nil
}

// percentiles returns the p50 and p99 of d in microseconds.
func percentiles(d []time.Duration) (p50, p99 float64) {
	if len(d) == 0 {
		return 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Nanoseconds()) / 1000 }
	return at(0.50), at(0.99)
}

// bpfNsPerPacket runs k round trips with the kernel's BPF statistics on and
// returns the run time per packet of the two endpoints' from_container
// programs (a tail call's run time counts for the program that made it, so
// this includes the node programs). ok is false where the
// kernel keeps no statistics.
func bpfNsPerPacket(b *testing.B, p *pingPong, k int, eps ...*Endpoint) (float64, bool) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Logf("no BPF statistics: %v", err)
		return 0, false
	}
	defer stats.Close()
	var progs []*ebpf.Program
	for _, ep := range eps {
		in, _, err := tcPrograms(ep.IfIndex)
		if err != nil || in == 0 {
			b.Fatalf("from_container of %s: %d, %v", ep.IfName, in, err)
		}
		prog, err := ebpf.NewProgramFromID(in)
		if err != nil {
			b.Fatal(err)
		}
		defer prog.Close()
		progs = append(progs, prog)
	}
	read := func() (time.Duration, uint64) {
		var rt time.Duration
		var cnt uint64
		for _, prog := range progs {
			s, err := prog.Stats()
			if err != nil {
				b.Fatal(err)
			}
			rt += s.Runtime
			cnt += s.RunCount
		}
		return rt, cnt
	}
	rt0, n0 := read()
	p.run(b, k)
	rt1, n1 := read()
	if n1 == n0 {
		return 0, false
	}
	return float64(rt1-rt0) / float64(n1-n0), true
}
