package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// The managed plugin's references in this test: `make plugin` builds the
// local one, `make plugin-push` publishes the same rootfs to the registry,
// and the user installs the registry's.
const (
	registryAddr  = "127.0.0.1:5000"
	pluginTag     = "e2e"
	localPlugin   = "ebpfnet/ebpfnet:" + pluginTag
	managedPlugin = registryAddr + "/ebpfnet:" + pluginTag
	// The plugin shares the host's network: its metrics are on the host.
	pluginMetricsAddr = "127.0.0.1:9963"
)

// TestManagedPluginFromARegistry is issue #6 as a new user meets it: build
// and push the plugin, install it from a registry with `docker plugin
// install`, and use it by its reference. Containers talk, the CLI on the
// host reaches the plugin, policy and monitor work, the host's iptables
// gets our rules from inside a FROM-scratch image, and a plugin restart
// keeps the network and the containers' datapath.
func TestManagedPluginFromARegistry(t *testing.T) {
	bin := requireEnvironment(t)
	testutil.RequireCommand(t, "make", "docker-registry", "iptables")
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	removePlugins := func() {
		_, _ = tryRun("docker", "plugin", "rm", "-f", managedPlugin)
		_, _ = tryRun("docker", "plugin", "rm", "-f", localPlugin)
	}
	removePlugins()
	hideHostState(t)
	// Registered after hideHostState, so it runs before the state comes
	// back, and before the rest: after the containers and the network,
	// which need the plugin to answer.
	t.Cleanup(removePlugins)
	t.Cleanup(func() { _, _ = tryRun(bin, "policy", "delete", "--all") })
	startRegistry(t)

	run(t, "make", "-s", "-C", repo, "plugin", "PLUGIN_TAG="+pluginTag)
	caps := run(t, "docker", "plugin", "inspect", "-f", "{{json .Config.Linux.Capabilities}}", localPlugin)
	for _, c := range []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON"} {
		if !strings.Contains(caps, c) {
			t.Errorf("plugin capabilities %s lack %s", caps, c)
		}
	}
	run(t, "make", "-s", "-C", repo, "plugin-push", "REGISTRY="+registryAddr, "PLUGIN_TAG="+pluginTag)
	run(t, "docker", "plugin", "rm", "-f", localPlugin)
	run(t, "docker", "plugin", "install", "--grant-all-permissions", managedPlugin,
		"EBPFNET_LOG_LEVEL=debug", "EBPFNET_METRICS_ADDR="+pluginMetricsAddr)
	if env := run(t, "docker", "plugin", "inspect", "-f", "{{json .Settings.Env}}", managedPlugin); !strings.Contains(env, "EBPFNET_LOG_LEVEL=debug") {
		t.Errorf("plugin env %s: EBPFNET_LOG_LEVEL=debug not set", env)
	}
	waitForPluginAPI(t)
	// The two modes share the host's state: a legacy daemon started
	// beside the plugin must refuse, not run.
	legacyCtx, cancelLegacy := context.WithTimeout(context.Background(), 15*time.Second)
	out, err := exec.CommandContext(legacyCtx, bin, "daemon").CombinedOutput()
	cancelLegacy()
	if err == nil || !strings.Contains(string(out), "another ebpfnet daemon holds") {
		t.Errorf("a legacy daemon beside the managed plugin: %v, %s", err, out)
	}

	const net = "e2e-managed"
	_, _ = tryRun("docker", "network", "rm", net)
	run(t, "docker", "network", "create", "-d", managedPlugin, "--ipam-driver", managedPlugin, "--subnet", "10.239.0.0/24", net)
	// The test removes it itself; this is for a test that failed earlier.
	t.Cleanup(func() { _, _ = tryRun("docker", "network", "rm", net) })
	httpd(t, "e2e-mapp1", net, "--label", "id=app1")
	sleeper(t, "e2e-mapp2", net, "--label", "id=app2")
	sleeper(t, "e2e-mapp3", net, "--label", "id=app3")
	app1 := containerIP(t, "e2e-mapp1", net)
	if err := ping("e2e-mapp2", app1); err != nil {
		t.Fatalf("app2 -> app1 ping through the managed plugin: %v", err)
	}
	eventually(t, 10*time.Second, "app3 -> app1 HTTP before any rule", func() error { return httpGet("e2e-mapp3", app1) })

	// The CLI on the host reaches the plugin through the mounted /run/ebpfnet.
	eventually(t, 10*time.Second, "three endpoints with their labels in the host's CLI", func() error {
		labelled := 0
		for _, ep := range endpoints(t) {
			if strings.HasPrefix(ep.IPv4, "10.239.") && len(ep.Labels) > 0 {
				labelled++
			}
		}
		if labelled != 3 {
			return fmt.Errorf("%d labelled endpoints in 10.239.0.0/24", labelled)
		}
		return nil
	})
	// The masquerade rule came from inside a FROM-scratch image: the
	// plugin ran the host's own iptables (hostexec).
	if rules := run(t, "iptables", "-t", "nat", "-S", "EBPFNET-POSTROUTING"); !strings.Contains(rules, "10.239.0.0/24") {
		t.Errorf("no masquerade rule for the network in the host's iptables:\n%s", rules)
	}

	monitor := startMonitor(t, bin, "--type", "drop")
	importRules(t, bin, l3Rule)
	if err := httpGet("e2e-mapp2", app1); err != nil {
		t.Errorf("L3 rule: app2 -> app1: %v", err)
	}
	if err := httpGet("e2e-mapp3", app1); err == nil {
		t.Errorf("L3 rule: app3 reached app1")
	}
	eventually(t, 5*time.Second, "the host's monitor shows app3's drop", func() error {
		if _, ok := monitor.find(func(ev api.MonitorEvent) bool {
			return ev.Type == "drop" && hasLabel(ev.SrcLabels, "container:id=app3")
		}); !ok {
			return fmt.Errorf("no drop of app3 among %v", monitor.types())
		}
		return nil
	})

	// Metrics, switched on by a plugin setting, count the Docker calls and
	// the datapath's drops by reason.
	eventually(t, 5*time.Second, "the plugin's Prometheus metrics", func() error {
		page, err := httpBody("http://" + pluginMetricsAddr + "/metrics")
		if err != nil {
			return err
		}
		for _, want := range []string{
			`ebpfnet_docker_call_duration_seconds_count{call="/NetworkDriver.CreateEndpoint",outcome="ok"}`,
			`ebpfnet_drop_count_total{direction="INGRESS",reason="Policy denied"}`,
			`ebpfnet_endpoint_state{state="ready"} 3`,
		} {
			if !strings.Contains(page, want) {
				return fmt.Errorf("no %s in /metrics", want)
			}
		}
		return nil
	})

	// A plugin restart (upgrade, `docker plugin disable`) keeps the
	// network, the containers' datapath and the policy.
	run(t, "docker", "plugin", "disable", "-f", managedPlugin)
	if err := ping("e2e-mapp2", app1); err != nil {
		t.Errorf("app2 -> app1 while the plugin is disabled: %v", err)
	}
	run(t, "docker", "plugin", "enable", managedPlugin)
	waitForPluginAPI(t)
	// Reconcile runs after a start; give it its moment, then check that it
	// kept what Docker knows under the plugin's reference.
	waitReconciled(t, bin)
	if err := httpGet("e2e-mapp2", app1); err != nil {
		t.Errorf("app2 -> app1 after the plugin restart: %v", err)
	}
	if err := httpGet("e2e-mapp3", app1); err == nil {
		t.Errorf("app3 reached app1 after the plugin restart: policy lost")
	}
	sleeper(t, "e2e-mapp4", net, "--label", "id=app2")
	app4 := containerIP(t, "e2e-mapp4", net)
	if err := ping("e2e-mapp2", app4); err != nil {
		t.Errorf("a container started after the restart is unreachable: %v", err)
	}

	for _, c := range []string{"e2e-mapp1", "e2e-mapp2", "e2e-mapp3", "e2e-mapp4"} {
		run(t, "docker", "rm", "-f", c)
	}
	run(t, "docker", "network", "rm", net)
	eventually(t, 10*time.Second, "leftovers of the managed plugin's network", func() error {
		return leftovers("10.239.")
	})
}

// hideHostState makes this a new host for the plugin: no /var/lib/ebpfnet
// and no /run/ebpfnet. Docker does not create a missing mount source, and
// /run is emptied at every boot, so the plugin must start without them.
// What the earlier tests left there comes back when the test ends.
func hideHostState(t *testing.T) {
	t.Helper()
	for _, dir := range []string{libDir, "/run/ebpfnet"} {
		hidden := dir + ".e2e-hidden"
		if err := os.RemoveAll(hidden); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dir, hidden); err != nil && !os.IsNotExist(err) {
			t.Fatalf("hide %s: %v", dir, err)
		}
		t.Cleanup(func() {
			if err := os.RemoveAll(dir); err != nil {
				t.Errorf("remove the plugin's %s: %v", dir, err)
			}
			if err := os.Rename(hidden, dir); err != nil && !os.IsNotExist(err) {
				t.Errorf("restore %s: %v", dir, err)
			}
		})
	}
}

// startRegistry runs Debian's docker-registry on registryAddr, storing in
// the test's temporary directory, until the test ends.
func startRegistry(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yml")
	body := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "data"), registryAddr)
	if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("docker-registry", "serve", config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start docker-registry: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logFile.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logFile.Name())
			t.Logf("registry log:\n%s", data)
		}
	})
	eventually(t, 15*time.Second, "registry answers on "+registryAddr, func() error {
		resp, err := http.Get("http://" + registryAddr + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
}

// httpBody GETs url and returns the body of a 200 answer.
func httpBody(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(body), nil
}

// waitForPluginAPI waits until the plugin's local API answers the CLI.
func waitForPluginAPI(t *testing.T) {
	t.Helper()
	eventually(t, 20*time.Second, "the plugin's API answers the host's CLI", func() error {
		_, err := tryRun(*binaryFlag, "status")
		return err
	})
}
