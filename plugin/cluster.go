package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/cluster"
	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/ipcache"
)

// ClusterConfig makes the node one of several that share networks,
// identities, addresses and policy through etcd (issue #11). Without
// EtcdEndpoints the daemon is a single node and needs no etcd.
type ClusterConfig struct {
	EtcdEndpoints []string
	// NodeName names the node in the cluster; the hostname by default.
	NodeName string
	// NodeIP is where other nodes send this node's traffic: the source
	// address of the default route by default (DefaultNodeIP).
	NodeIP netip.Addr
	// LeaseTTL is how long the node's entries outlive it; 0 is the
	// cluster package's default.
	LeaseTTL time.Duration
	// BlockBits is the prefix length of the node's block of each cluster
	// network; 0 is the cluster package's default (/24).
	BlockBits int
	// BlockBits6 is the same for IPv6 cluster networks (default /112).
	BlockBits6 int
	// OverlayDevice and OverlayPort are the VXLAN device and UDP port;
	// empty and 0 are datapath's defaults.
	OverlayDevice string
	OverlayPort   int
}

// Enabled reports whether the node is one of a cluster.
func (c ClusterConfig) Enabled() bool { return len(c.EtcdEndpoints) > 0 }

// Files in the lib directory that only a cluster node writes.
const (
	clusterStateFile    = "cluster.json"            // the lease kept across restarts
	clusterIdentityFile = "cluster-identities.json" // the identities last seen
	clusterPolicyFile   = "cluster-policy.json"     // the cluster's rules last seen
)

// DefaultNodeIP is the source address of the node's default route: the
// address other nodes most likely reach it at.
func DefaultNodeIP() (netip.Addr, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list the default routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && !(r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) {
			continue
		}
		if src, ok := netip.AddrFromSlice(r.Src.To4()); ok && src.IsValid() && !src.IsUnspecified() {
			return src, nil
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip.IsGlobalUnicast() {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, errors.New("this node has no default route with an IPv4 source address: give --node-ip")
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// overlayConfig is the datapath's overlay for a cluster node, nil on a
// single node.
func (d *Daemon) overlayConfig() (*datapath.OverlayConfig, error) {
	c := d.cfg.Cluster
	if !c.Enabled() {
		return nil, nil
	}
	mtu, err := datapath.UplinkMTU(c.NodeIP)
	if err != nil {
		return nil, fmt.Errorf("node IP %s: %w", c.NodeIP, err)
	}
	o := &datapath.OverlayConfig{Device: c.OverlayDevice, Port: c.OverlayPort, UplinkMTU: mtu}
	if o.Device == "" {
		o.Device = datapath.DefaultOverlayDevice
	}
	if o.Port == 0 {
		o.Port = datapath.DefaultOverlayPort
	}
	return o, nil
}

// connectCluster joins the cluster. etcd may be unreachable: the node
// starts anyway, restores its endpoints, and keeps trying (status says
// so).
func (d *Daemon) connectCluster() error {
	c := d.cfg.Cluster
	node, err := cluster.Connect(context.Background(), cluster.Config{
		Endpoints:         c.EtcdEndpoints,
		NodeName:          c.NodeName,
		NodeIP:            c.NodeIP,
		LeaseTTL:          c.LeaseTTL,
		BlockBits:         c.BlockBits,
		BlockBits6:        c.BlockBits6,
		StatePath:         filepath.Join(d.cfg.LibDir, clusterStateFile),
		IdentityCachePath: filepath.Join(d.cfg.LibDir, clusterIdentityFile),
		IdentityGrace:     d.cfg.identityGrace(),
		Version:           d.cfg.Version,
		Log:               d.log.WithField("subsys", "cluster"),
	})
	if err != nil {
		return fmt.Errorf("join the cluster: %w", err)
	}
	d.cluster = node
	return nil
}

// remoteView keeps the ipcache's remote source equal to what the other
// nodes publish (cluster.RemoteSink): their endpoints, and their blocks
// for endpoints not known yet, each behind its node's IP.
type remoteView struct {
	cache  *ipcache.Cache
	log    logrus.FieldLogger
	synced sync.Once
}

func remoteEntry(e cluster.RemoteEntry) ipcache.Entry {
	return ipcache.Entry{Identity: e.Identity, TunnelEndpoint: e.NodeIP, Node: e.Node}
}

func (v *remoteView) Replace(all map[netip.Prefix]cluster.RemoteEntry) {
	entries := make(map[netip.Prefix]ipcache.Entry, len(all))
	for p, e := range all {
		entries[p] = remoteEntry(e)
	}
	if err := v.cache.Replace(ipcache.SourceRemote, entries); err != nil {
		v.log.Warn("remote ipcache entries: ", err)
	}
	// The first full listing is all the remote source holds: entries of
	// the last start that it does not hold go now, not before.
	v.synced.Do(func() {
		if err := v.cache.MarkSynced(ipcache.SourceRemote); err != nil {
			v.log.Warn("remove stale ipcache entries: ", err)
		}
	})
}

func (v *remoteView) Upsert(p netip.Prefix, e cluster.RemoteEntry) {
	if err := v.cache.Upsert(p, ipcache.SourceRemote, remoteEntry(e)); err != nil {
		v.log.Warn("remote ipcache entry: ", err)
	}
}

func (v *remoteView) Delete(p netip.Prefix) {
	if err := v.cache.Delete(p, ipcache.SourceRemote); err != nil {
		v.log.Warn("remove a remote ipcache entry: ", err)
	}
}

// watchRemote feeds the ipcache from the cluster until ctx ends.
func (d *Daemon) watchRemote(ctx context.Context) {
	view := &remoteView{cache: d.ipcache, log: d.log.WithField("subsys", "cluster")}
	for ctx.Err() == nil {
		err := d.cluster.WatchRemote(ctx, view)
		if ctx.Err() != nil {
			return
		}
		d.log.WithError(err).Warn("watching the other nodes' endpoints stopped; starting again")
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// labelIdentities is where label sets get their numbers: the cluster's
// store in a cluster, the node's file otherwise.
func (d *Daemon) labelIdentities() identity.Allocator {
	if d.cluster != nil {
		return d.cluster.Identities()
	}
	return d.identities
}
