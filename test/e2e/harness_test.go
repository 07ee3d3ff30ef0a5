// Package e2e drives a real dockerd through the docker CLI against a real
// `ebpfnet daemon`, and sends real packets between real containers.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/testutil"
)

var binaryFlag = flag.String("ebpfnet-binary", "", "path of the ebpfnet binary under test (built by `make e2e`)")

// Paths of the daemon under test: the contract paths (ARCHITECTURE.md), since
// Docker finds the plugin only at /run/docker/plugins/ebpfnet.sock.
const (
	stateDir = "/run/ebpfnet/state"
	runDir   = "/run/ebpfnet"
	pinDir   = "/sys/fs/bpf/ebpfnet"
	libDir   = "/var/lib/ebpfnet"
	image    = "ebpfnet-test:latest"
)

// daemon is one `ebpfnet daemon` process started by a test.
type daemon struct {
	t       testing.TB
	binary  string
	args    []string
	cmd     *exec.Cmd
	logPath string
	done    chan error
}

// requireEnvironment fails (in CI) or skips when the e2e prerequisites are
// missing: root, dockerd, the test image and the binary.
func requireEnvironment(t testing.TB) string {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "docker", "ip", "bpftool")
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		testutil.Missing(t, "dockerd does not answer (run scripts/setup): %v: %s", err, out)
	}
	if err := exec.Command("docker", "image", "inspect", image).Run(); err != nil {
		testutil.Missing(t, "image %s is missing (run scripts/make-image)", image)
	}
	bin := *binaryFlag
	if bin == "" {
		testutil.Missing(t, "-ebpfnet-binary not given (run `make e2e`)")
	}
	if _, err := os.Stat(bin); err != nil {
		testutil.Missing(t, "ebpfnet binary %s: %v", bin, err)
	}
	return bin
}

// startDaemon starts the daemon and waits until the local API answers. The
// daemon is stopped with SIGTERM when the test ends, after the containers
// and networks the test made: those cleanups were registered later and run
// first, while the daemon can still answer Docker.
func startDaemon(t testing.TB, binary string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, binary: binary, args: args}
	// Registered before the start, so that a daemon whose API never came
	// up is stopped too.
	t.Cleanup(func() {
		if d.cmd == nil || d.cmd.Process == nil {
			return // never started
		}
		d.stop(syscall.SIGTERM)
		if t.Failed() {
			d.dumpLog()
		}
	})
	d.start()
	removeStaleTestObjects(t)
	return d
}

// restart starts the daemon again after stop, keeping its place in the
// test's cleanups.
func (d *daemon) restart() {
	d.t.Helper()
	d.start()
}

func (d *daemon) start() {
	t := d.t
	t.Helper()
	logFile, err := os.CreateTemp(t.TempDir(), "daemon-*.log")
	if err != nil {
		t.Fatal(err)
	}
	d.logPath = logFile.Name()
	d.done = make(chan error, 1)
	d.cmd = exec.Command(d.binary, append([]string{"daemon", "--log-level", "debug"}, d.args...)...)
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	go func() { d.done <- d.cmd.Wait(); logFile.Close() }()
	d.waitForAPI()
}

// removeStaleTestObjects removes the e2e-* containers and networks that an
// interrupted earlier run left, once per test binary: they would hold the
// subnets the tests use. It needs a running daemon, since Docker asks the
// plugin to delete its networks.
func removeStaleTestObjects(t testing.TB) {
	staleOnce.Do(func() {
		if ids, _ := tryRun("docker", "ps", "-aq", "--filter", "name=e2e-"); ids != "" {
			_, _ = tryRun("docker", append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		}
		if names, _ := tryRun("docker", "network", "ls", "-q", "--filter", "name=e2e-"); names != "" {
			if out, err := tryRun("docker", append([]string{"network", "rm"}, strings.Fields(names)...)...); err != nil {
				t.Logf("removing stale test networks: %v %s", err, out)
			}
		}
	})
}

var staleOnce sync.Once

func (d *daemon) waitForAPI() {
	t := d.t
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := api.NewClient(api.DefaultSocket).Status(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case werr := <-d.done:
			d.done <- werr
			d.dumpLog()
			t.Fatalf("daemon exited at start: %v", werr)
		default:
		}
		if time.Now().After(deadline) {
			d.dumpLog()
			t.Fatalf("daemon API did not come up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends sig and waits for the process to end. Stopping twice is fine.
func (d *daemon) stop(sig syscall.Signal) {
	if d.cmd.ProcessState != nil {
		return
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case err := <-d.done:
		d.done <- err
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		d.t.Errorf("daemon did not stop within 15s of %v", sig)
		<-d.done
	}
}

func (d *daemon) dumpLog() {
	data, _ := os.ReadFile(d.logPath)
	d.t.Logf("daemon log:\n%s", data)
}

// run runs a command and returns its trimmed stdout, failing the test on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := tryRun(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

// tryRun runs a command and returns its trimmed stdout; the error includes stderr.
func tryRun(name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return strings.TrimSpace(stdout.String()), fmt.Errorf("%w: %s%s", err, stderr.String(), stdout.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

// network creates a Docker network with the ebpfnet drivers and removes it
// when the test ends, unless the test removed it itself. It returns the
// network's ID.
func network(t testing.TB, name string, args ...string) string {
	t.Helper()
	_, _ = tryRun("docker", "network", "rm", name)
	full := append([]string{"network", "create", "-d", "ebpfnet", "--ipam-driver", "ebpfnet"}, args...)
	id := run(t, "docker", append(full, name)...)
	t.Cleanup(func() {
		if _, err := tryRun("docker", "network", "inspect", name); err != nil {
			return // gone already
		}
		if out, err := tryRun("docker", "network", "rm", name); err != nil {
			t.Errorf("docker network rm %s: %v %s", name, err, out)
		}
	})
	return id
}

// container starts a detached container and removes it when the test ends.
// It returns the container's ID.
func container(t testing.TB, name string, args ...string) string {
	t.Helper()
	_, _ = tryRun("docker", "rm", "-f", name)
	full := append([]string{"run", "-d", "--name", name}, args...)
	id := run(t, "docker", full...)
	t.Cleanup(func() { _, _ = tryRun("docker", "rm", "-f", name) })
	return id
}

// httpd starts a busybox httpd serving /www on port 80.
func httpd(t *testing.T, name, net string, extra ...string) string {
	args := append([]string{"--network", net}, extra...)
	args = append(args, image, "httpd", "-f", "-p", "80", "-h", "/www")
	return container(t, name, args...)
}

// sleeper starts a container that just waits, to exec commands in.
func sleeper(t *testing.T, name, net string, extra ...string) string {
	args := append([]string{"--network", net}, extra...)
	args = append(args, image, "sleep", "3600")
	return container(t, name, args...)
}

// containerIP returns the container's address on the named network.
func containerIP(t testing.TB, name, net string) string {
	t.Helper()
	return run(t, "docker", "inspect", "-f", fmt.Sprintf("{{(index .NetworkSettings.Networks %q).IPAddress}}", net), name)
}

// exec runs a command inside a container.
func execIn(name string, args ...string) (string, error) {
	return tryRun("docker", append([]string{"exec", name}, args...)...)
}

// ping sends one echo request from a container and reports success.
func ping(from, to string) error {
	_, err := execIn(from, "ping", "-c", "1", "-W", "2", to)
	return err
}

// endpoints asks the daemon for its endpoints.
func endpoints(t testing.TB) []api.Endpoint {
	t.Helper()
	out := run(t, *binaryFlag, "endpoint", "list", "-o", "json")
	var eps []api.Endpoint
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		t.Fatalf("endpoint list -o json: %v: %s", err, out)
	}
	return eps
}

// eventually retries check until it succeeds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
