package testutil

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Node is a Docker host of its own on this machine, made by scripts/node: a
// network and mount namespace with its own /run, /var/lib, bpffs,
// containerd and dockerd, joined to an underlay bridge. Commands run in it
// see the default paths of Docker and ebpfnet as on a host.
type Node struct {
	Name string
	// Addr is the node's address on the underlay, with its prefix length.
	Addr string
	// Underlay is the name of the underlay bridge.
	Underlay string
	script   string
}

// NodeScript is scripts/node of the repository that holds dir (a test's
// working directory).
func NodeScript(t testing.TB, dir string) string {
	t.Helper()
	for d, _ := filepath.Abs(dir); ; d = filepath.Dir(d) {
		script := filepath.Join(d, "scripts", "node")
		if _, err := os.Stat(script); err == nil {
			return script
		}
		if d == filepath.Dir(d) {
			t.Fatalf("no scripts/node above %s", dir)
		}
	}
}

// InNode returns the name of the node this process runs in, or "".
func InNode() string {
	b, _ := os.ReadFile("/run/ebpfnet-node/name")
	return strings.TrimSpace(string(b))
}

// NodeDocker returns the dockerd flavour of the node this process runs in
// (20.10, 29 or none), or "" outside a node.
func NodeDocker() string {
	b, _ := os.ReadFile("/run/ebpfnet-node/docker")
	return strings.TrimSpace(string(b))
}

// UpNode brings a node up with `scripts/node up name args...` (a node of
// that name left by an interrupted run is removed first) and brings it
// down when the test ends.
func UpNode(t testing.TB, script, name string, args ...string) *Node {
	t.Helper()
	RequireRoot(t)
	RequireCommand(t, "nsenter", "unshare", "ip", "containerd")
	n := &Node{Name: name, script: script}
	if out, err := n.call("down", name); err != nil {
		t.Fatalf("scripts/node down %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if log, err := n.call("logs", name); err == nil {
				t.Logf("dockerd log of node %s:\n%s", name, tail(log, 40))
			}
		}
		if out, err := n.call("down", name); err != nil {
			t.Errorf("scripts/node down %s: %v\n%s", name, err, out)
		}
	})
	if out, err := n.call(append([]string{"up", name}, args...)...); err != nil {
		t.Fatalf("scripts/node up %s: %v\n%s", name, err, out)
	}
	list, err := n.call("list")
	if err != nil {
		t.Fatalf("scripts/node list: %v\n%s", err, list)
	}
	for _, line := range strings.Split(list, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == name {
			n.Addr, n.Underlay = f[1], f[2]
		}
	}
	return n
}

// IP is the node's underlay address without its prefix length.
func (n *Node) IP() string { return strings.Split(n.Addr, "/")[0] }

// Exec runs a command in the node and returns its trimmed stdout; the error
// carries stderr.
func (n *Node) Exec(args ...string) (string, error) {
	return n.call(append([]string{"exec", n.Name}, args...)...)
}

// Run is Exec that fails the test on error.
func (n *Node) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		t.Fatalf("in node %s: %s: %v", n.Name, strings.Join(args, " "), err)
	}
	return out
}

// Start starts a long-running command in the node under the name proc; it
// runs until Stop or until the node goes down. Its output is Log(proc).
func (n *Node) Start(t testing.TB, proc string, args ...string) {
	t.Helper()
	if out, err := n.call(append([]string{"exec", "-d", "--name", proc, n.Name}, args...)...); err != nil {
		t.Fatalf("start %s in node %s: %v\n%s", proc, n.Name, err, out)
	}
}

// Stop stops a command Start started (SIGTERM, then SIGKILL).
func (n *Node) Stop(t testing.TB, proc string) {
	t.Helper()
	if out, err := n.call("kill", n.Name, proc); err != nil {
		t.Fatalf("stop %s in node %s: %v\n%s", proc, n.Name, err, out)
	}
}

// Log returns the output of a command Start started, or dockerd's ("dockerd").
func (n *Node) Log(proc string) string {
	out, _ := n.call("logs", n.Name, proc)
	return out
}

// RestartDocker stops the node's dockerd and starts it again, with the
// dockerd arguments given, if any, instead of those of UpNode.
func (n *Node) RestartDocker(t testing.TB, dockerdArgs ...string) {
	t.Helper()
	args := []string{"restart-docker", n.Name}
	if len(dockerdArgs) > 0 {
		for _, a := range dockerdArgs {
			args = append(args, "--dockerd-arg", a)
		}
	}
	if out, err := n.call(args...); err != nil {
		t.Fatalf("restart dockerd of node %s: %v\n%s", n.Name, err, out)
	}
}

// UnderlayExec runs a command in the underlay's namespace, where the
// gateway address lives: the node's view of the outside world.
func (n *Node) UnderlayExec(args ...string) (string, error) {
	return n.call(append([]string{"underlay-exec", n.Underlay}, args...)...)
}

// StartInUnderlay starts a long-running command in the underlay's namespace
// (etcd on the gateway address, say) under the name proc. It runs until the
// underlay goes with its last node; its output is in
// `scripts/node logs ul-<underlay> proc`.
func (n *Node) StartInUnderlay(t testing.TB, proc string, args ...string) {
	t.Helper()
	if out, err := n.call(append([]string{"underlay-exec", "-d", "--name", proc, n.Underlay}, args...)...); err != nil {
		t.Fatalf("start %s in underlay %s: %v\n%s", proc, n.Underlay, err, out)
	}
}

func (n *Node) call(args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(n.script, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(stdout.String()), fmt.Errorf("%w: %s%s", err, stderr.String(), stdout.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
