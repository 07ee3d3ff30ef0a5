package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ebpfnet/ebpfnet/testutil"
)

// testEtcd is a real etcd (Debian's etcd-server) on 127.0.0.1, with its
// data in a temporary directory, stopped at the end of the test.
type testEtcd struct {
	t       *testing.T
	dir     string
	client  string
	peer    string
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startEtcd(t *testing.T) *testEtcd {
	t.Helper()
	e := newEtcd(t)
	e.start()
	return e
}

// newEtcd prepares an etcd without starting it.
func newEtcd(t *testing.T) *testEtcd {
	t.Helper()
	testutil.RequireCommand(t, "etcd")
	e := &testEtcd{t: t, dir: t.TempDir()}
	e.client = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	e.peer = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	e.logPath = filepath.Join(e.dir, "etcd.log")
	t.Cleanup(func() {
		e.stop()
		if t.Failed() {
			if data, err := os.ReadFile(e.logPath); err == nil && len(data) > 0 {
				t.Logf("etcd log (tail):\n%s", tail(data, 3000))
			}
		}
	})
	return e
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// start runs etcd on the same ports and data directory as before.
func (e *testEtcd) start() {
	e.t.Helper()
	logf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	e.cmd = exec.Command("etcd",
		"--name", "test",
		"--data-dir", filepath.Join(e.dir, "data"),
		"--listen-client-urls", e.client, "--advertise-client-urls", e.client,
		"--listen-peer-urls", e.peer, "--initial-advertise-peer-urls", e.peer,
		"--initial-cluster", "test="+e.peer,
		"--heartbeat-interval", "50", "--election-timeout", "500",
		"--logger", "zap", "--log-outputs", "stderr")
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		e.t.Fatalf("start etcd: %v", err)
	}
	e.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(e.cmd, e.done)
	cli := e.newClient()
	defer cli.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return
		}
		select {
		case <-e.done:
			e.t.Fatalf("etcd exited at start: %v", e.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("etcd did not answer: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends etcd (SIGTERM, then SIGKILL) and waits for it.
func (e *testEtcd) stop() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	select {
	case <-e.done:
		return
	default:
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(10 * time.Second):
		_ = e.cmd.Process.Kill()
		<-e.done
	}
}

func (e *testEtcd) newClient() *clientv3.Client {
	e.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.client}, Logger: zap.NewNop()})
	if err != nil {
		e.t.Fatal(err)
	}
	return cli
}

// proxy is a TCP relay in front of etcd that a test can cut, so that one
// node loses etcd while the others keep it.
type proxy struct {
	t      *testing.T
	l      net.Listener
	target string

	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, l: l, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) url() string { return "http://" + p.l.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut || p.closed {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// setCut cuts every connection and refuses new ones, or lets them in
// again.
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.l.Close()
	p.wg.Wait()
}

// testNode connects a node with short timers, closed at the end of the
// test.
type nodeOpts struct {
	name     string
	ip       string
	endpoint string
	dir      string // state directory; a fresh one when empty
	mutate   func(*Config)
}

func connectNode(t *testing.T, o nodeOpts) *Node {
	t.Helper()
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	log.SetOutput(testWriter{t})
	cfg := Config{
		Endpoints:         []string{o.endpoint},
		NodeName:          o.name,
		NodeIP:            netip.MustParseAddr(o.ip),
		LeaseTTL:          3 * time.Second,
		StatePath:         filepath.Join(o.dir, "node.json"),
		IdentityCachePath: filepath.Join(o.dir, "identities.json"),
		IdentityGrace:     time.Hour,
		RemoteGrace:       time.Second,
		RequestTimeout:    5 * time.Second,
		Log:               log.WithField("node", o.name),
	}
	if o.mutate != nil {
		o.mutate(&cfg)
	}
	n, err := Connect(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Connect %s: %v", o.name, err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// testWriter sends logs to t.Log, and nowhere once the test is over.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a log line after the test ended
	w.t.Log(string(p))
	return len(p), nil
}

func waitConnected(t *testing.T, n *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := n.WaitConnected(ctx); err != nil {
		t.Fatalf("%s: %v (status %+v)", n.Name(), err, n.Status())
	}
}

// eventually polls cond until it holds or 15 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}
