package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ebpfnet/ebpfnet/plugin"
	"github.com/ebpfnet/ebpfnet/ui"
)

func newDaemonCommand() *cobra.Command {
	cfg := plugin.DefaultConfig(version)
	var logLevel string
	var pools, pools6 []string
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Serve the Docker network and IPAM drivers and the local API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := logrus.New()
			// Docker logs a managed plugin's stderr as errors and its
			// stdout as info; systemd's journal takes either.
			log.SetOutput(os.Stdout)
			level, err := logrus.ParseLevel(logLevel)
			if err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			log.SetLevel(level)
			cfg.DefaultPools = cfg.DefaultPools[:0]
			for _, p := range pools {
				prefix, err := netip.ParsePrefix(p)
				if err != nil || !prefix.Addr().Is4() {
					return fmt.Errorf("--default-pool %q is not an IPv4 CIDR", p)
				}
				cfg.DefaultPools = append(cfg.DefaultPools, prefix.Masked())
			}
			cfg.DefaultPools6 = cfg.DefaultPools6[:0]
			for _, p := range pools6 {
				prefix, err := netip.ParsePrefix(p)
				if err != nil || !prefix.Addr().Is6() || prefix.Addr().Is4In6() {
					return fmt.Errorf("--default-pool6 %q is not an IPv6 CIDR", p)
				}
				if prefix.Bits() > 64 {
					return fmt.Errorf("--default-pool6 %s: smaller than the /64 an IPv6 network gets", p)
				}
				cfg.DefaultPools6 = append(cfg.DefaultPools6, prefix.Masked())
			}
			if cfg.DriverName == "" {
				// Docker names a legacy plugin after its socket file.
				cfg.DriverName = strings.TrimSuffix(filepath.Base(cfg.PluginSocket), ".sock")
			}
			if cfg.IdentityGrace < 0 {
				return fmt.Errorf("--identity-grace %s: must not be negative", cfg.IdentityGrace)
			}
			if cfg.DefaultPoolSize < 8 || cfg.DefaultPoolSize > 30 {
				return fmt.Errorf("--default-pool-size %d: must be from 8 to 30", cfg.DefaultPoolSize)
			}
			if err := clusterFlags.apply(&cfg); err != nil {
				return err
			}
			if cfg.UI.Addr != "" {
				if err := ui.CheckAddr(cfg.UI.Addr, cfg.UI.AllowRemote); err != nil {
					return err
				}
			}
			return plugin.Run(cmd.Context(), cfg, log)
		},
	}
	defaults := make([]string, 0, len(cfg.DefaultPools))
	for _, p := range cfg.DefaultPools {
		defaults = append(defaults, p.String())
	}
	defaults6 := make([]string, 0, len(cfg.DefaultPools6))
	for _, p := range cfg.DefaultPools6 {
		defaults6 = append(defaults6, p.String())
	}
	f := cmd.Flags()
	f.StringVar(&logLevel, "log-level", envOr("EBPFNET_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env EBPFNET_LOG_LEVEL)")
	f.StringSliceVar(&pools, "default-pool", envList("EBPFNET_DEFAULT_POOL", defaults), "range that networks without --subnet get their subnet from (env EBPFNET_DEFAULT_POOL)")
	f.IntVar(&cfg.DefaultPoolSize, "default-pool-size", cfg.DefaultPoolSize, "prefix length of each default subnet")
	f.StringSliceVar(&pools6, "default-pool6", envList("EBPFNET_DEFAULT_POOL6", defaults6), "range that --ipv6 networks without an IPv6 --subnet get a /64 from (env EBPFNET_DEFAULT_POOL6)")
	f.StringVar(&cfg.PluginSocket, "plugin-socket", cfg.PluginSocket, "socket Docker finds the plugin at")
	f.StringVar(&cfg.APISocket, "api-socket", cfg.APISocket, "local API socket for the CLI")
	f.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "per-endpoint state (ep_config.h, bpf_lxc.o)")
	f.StringVar(&cfg.LibDir, "lib-dir", cfg.LibDir, "persisted networks, pools and addresses")
	f.StringVar(&cfg.PinDir, "bpf-dir", cfg.PinDir, "bpffs directory for pinned maps and links")
	f.StringVar(&cfg.HostDevice, "host-device", cfg.HostDevice, "dummy device that carries the gateway addresses")
	f.StringVar(&cfg.UI.Addr, "ui-addr", envOr("EBPFNET_UI_ADDR", ""), "serve the service map (a web page) at http://ADDR/, e.g. 127.0.0.1:9966 (default off; env EBPFNET_UI_ADDR)")
	f.BoolVar(&cfg.UI.AllowRemote, "ui-allow-remote", envOr("EBPFNET_UI_ALLOW_REMOTE", "") == "true", "let --ui-addr be other than a loopback address: the page shows every container and flow, without a password (env EBPFNET_UI_ALLOW_REMOTE=true)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", envOr("EBPFNET_METRICS_ADDR", ""), "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9962 (default off; env EBPFNET_METRICS_ADDR)")
	cfg.DriverName = ""
	f.StringVar(&cfg.DriverName, "driver-name", envOr("EBPFNET_DRIVER_NAME", ""), "name Docker knows the plugin by (default: the plugin socket's name without .sock)")
	f.DurationVar(&cfg.IdentityGrace, "identity-grace", 0, "how long a label identity is kept once no container holds it (in a cluster: on no node), so that a container run again with the same labels keeps its number (default 5m)")
	f.StringVar(&cfg.DockerHost, "docker-host", envOr("DOCKER_HOST", ""), "the dockerd whose events give containers' labels (default: DOCKER_HOST, else the standard socket)")
	clusterFlags.register(f)
	return cmd
}

// clusterOptions are the flags that make the node one of a cluster.
type clusterOptions struct {
	endpoints []string
	nodeName  string
	nodeIP    string
	leaseTTL  time.Duration
	blockBits int
	// blockBits6 is the node's block size in IPv6 cluster networks.
	blockBits6 int
}

var clusterFlags clusterOptions

func (o *clusterOptions) register(f *pflag.FlagSet) {
	f.StringSliceVar(&o.endpoints, "etcd-endpoints", envList("EBPFNET_ETCD_ENDPOINTS", nil), "etcd URLs: join the cluster they hold (env EBPFNET_ETCD_ENDPOINTS; default: a single node, no etcd)")
	f.StringVar(&o.nodeName, "node-name", envOr("EBPFNET_NODE_NAME", ""), "this node's name in the cluster (env EBPFNET_NODE_NAME; default: the hostname)")
	f.StringVar(&o.nodeIP, "node-ip", envOr("EBPFNET_NODE_IP", ""), "the address other nodes reach this one at (env EBPFNET_NODE_IP; default: the default route's source address)")
	f.DurationVar(&o.leaseTTL, "etcd-lease-ttl", 0, "how long a node's entries outlive it in etcd (default 60s)")
	f.IntVar(&o.blockBits, "node-block-size", 0, "prefix length of a node's address block in each cluster network (default 24)")
	f.IntVar(&o.blockBits6, "node-block-size6", 0, "prefix length of a node's address block in each IPv6 cluster network (default 112)")
}

// apply fills cfg.Cluster, with the defaults that need the host.
func (o *clusterOptions) apply(cfg *plugin.Config) error {
	if len(o.endpoints) == 0 {
		if o.nodeName != "" || o.nodeIP != "" {
			return errors.New("--node-name and --node-ip need --etcd-endpoints")
		}
		return nil
	}
	c := plugin.ClusterConfig{EtcdEndpoints: o.endpoints, NodeName: o.nodeName, LeaseTTL: o.leaseTTL, BlockBits: o.blockBits, BlockBits6: o.blockBits6}
	if c.NodeName == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no --node-name and no hostname: %w", err)
		}
		c.NodeName = host
	}
	if o.nodeIP != "" {
		ip, err := netip.ParseAddr(o.nodeIP)
		if err != nil || !ip.Is4() {
			return fmt.Errorf("--node-ip %q is not an IPv4 address", o.nodeIP)
		}
		c.NodeIP = ip
	} else {
		ip, err := plugin.DefaultNodeIP()
		if err != nil {
			return err
		}
		c.NodeIP = ip
	}
	cfg.Cluster = c
	return nil
}
