// Command nulldriver is the least a Docker network plugin can do: the
// floor under ebpfnet's setup cost. It answers both halves of Docker's
// remote driver API, network driver and IPAM, on one socket; it makes each
// endpoint's veth pair (Docker moves one end into the container, as it does
// ebpfnet's) and hands out addresses from a counter. No program, map,
// route, state file or Docker event: what `docker run` costs with it is
// what Docker's remote-driver path costs, and bench/run measures ebpfnet
// against it in the same repetitions as the bridge.
//
//	nulldriver -name ebpfnet-null    # serves /run/docker/plugins/ebpfnet-null.sock
//
// It is a benchmark's reference, not a product: no persistence, no
// address reuse, no check of what Docker asks beyond what it needs.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
)

func main() {
	name := flag.String("name", "ebpfnet-null", "plugin name: the socket is /run/docker/plugins/NAME.sock")
	flag.Parse()
	sock := filepath.Join("/run/docker/plugins", *name+".sock")
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		log.Fatal(err)
	}
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatalf("listen on %s: %v", sock, err)
	}
	d := &driver{pools: map[string]*pool{}, peers: map[string]string{}, gateways: map[string]gateways{}}
	srv := &http.Server{Handler: d.mux()}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		_ = srv.Close()
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	_ = os.Remove(sock)
	d.deleteAll()
}

// pool hands out the addresses of one subnet in order, never reusing one:
// a benchmark's few hundred runs do not exhaust a /24's neighbourhood.
type pool struct {
	prefix netip.Prefix
	next   netip.Addr
}

// gateways are an endpoint's gateways; gw6 is invalid on an IPv4 network.
type gateways struct{ gw4, gw6 netip.Addr }

type driver struct {
	mu    sync.Mutex
	pools map[string]*pool
	// peers maps an endpoint ID to its host-side veth name.
	peers map[string]string
	// gateways maps an endpoint ID to its subnets' first addresses (IPv4,
	// and IPv6 on a dual-stack network), which Join gives Docker: without
	// a gateway Docker would also connect the container to
	// docker_gwbridge, which the bridge does not pay.
	gateways map[string]gateways
	// deletions are the veth deletions under way.
	deletions sync.WaitGroup
}

func (d *driver) mux() *http.ServeMux {
	m := http.NewServeMux()
	answer := func(path string, f func(req map[string]any) (any, error)) {
		m.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			req := map[string]any{}
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil && r.ContentLength > 0 {
				reply(w, nil, fmt.Errorf("decode %s: %w", path, err))
				return
			}
			resp, err := f(req)
			reply(w, resp, err)
		})
	}
	empty := func(map[string]any) (any, error) { return map[string]any{}, nil }
	answer("/Plugin.Activate", func(map[string]any) (any, error) {
		return map[string]any{"Implements": []string{"NetworkDriver", "IpamDriver"}}, nil
	})
	answer("/NetworkDriver.GetCapabilities", func(map[string]any) (any, error) {
		return map[string]any{"Scope": "local", "ConnectivityScope": "local"}, nil
	})
	for _, p := range []string{"CreateNetwork", "DeleteNetwork", "Leave", "DiscoverNew", "DiscoverDelete",
		"ProgramExternalConnectivity", "RevokeExternalConnectivity", "AllocateNetwork", "FreeNetwork"} {
		answer("/NetworkDriver."+p, empty)
	}
	answer("/NetworkDriver.EndpointOperInfo", func(map[string]any) (any, error) {
		return map[string]any{"Value": map[string]any{}}, nil
	})
	answer("/NetworkDriver.CreateEndpoint", d.createEndpoint)
	answer("/NetworkDriver.Join", d.join)
	answer("/NetworkDriver.DeleteEndpoint", d.deleteEndpoint)
	answer("/IpamDriver.GetCapabilities", func(map[string]any) (any, error) {
		return map[string]any{"RequiresMACAddress": false}, nil
	})
	answer("/IpamDriver.GetDefaultAddressSpaces", func(map[string]any) (any, error) {
		return map[string]any{"LocalDefaultAddressSpace": "null-local", "GlobalDefaultAddressSpace": "null-global"}, nil
	})
	answer("/IpamDriver.RequestPool", d.requestPool)
	answer("/IpamDriver.ReleasePool", empty)
	answer("/IpamDriver.RequestAddress", d.requestAddress)
	answer("/IpamDriver.ReleaseAddress", empty)
	return m
}

// reply writes Docker's answer: the response, or {"Err": ...}.
func reply(w http.ResponseWriter, resp any, err error) {
	w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1+json")
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		resp = map[string]string{"Err": err.Error()}
	}
	_ = json.NewEncoder(w).Encode(resp)
}

// str is req[key] if it is a string; req may be nil.
func str(req map[string]any, key string) string {
	s, _ := req[key].(string)
	return s
}

func (d *driver) requestPool(req map[string]any) (any, error) {
	prefix, err := netip.ParsePrefix(str(req, "Pool"))
	if err != nil {
		return nil, fmt.Errorf("nulldriver needs a --subnet (got %q)", str(req, "Pool"))
	}
	prefix = prefix.Masked()
	d.mu.Lock()
	defer d.mu.Unlock()
	// .1 is the gateway's; endpoints start at .2.
	d.pools[prefix.String()] = &pool{prefix: prefix, next: prefix.Addr().Next().Next()}
	return map[string]any{"PoolID": prefix.String(), "Pool": prefix.String()}, nil
}

func (d *driver) requestAddress(req map[string]any) (any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.pools[str(req, "PoolID")]
	if !ok {
		return nil, fmt.Errorf("unknown pool %q", str(req, "PoolID"))
	}
	bits := p.prefix.Bits()
	if opts, _ := req["Options"].(map[string]any); opts != nil && opts["RequestAddressType"] == "com.docker.network.gateway" {
		return map[string]any{"Address": netip.PrefixFrom(p.prefix.Addr().Next(), bits).String()}, nil
	}
	if a := str(req, "Address"); a != "" {
		return map[string]any{"Address": a + fmt.Sprintf("/%d", bits)}, nil
	}
	a := p.next
	if !p.prefix.Contains(a) {
		return nil, fmt.Errorf("pool %s exhausted", p.prefix)
	}
	p.next = a.Next()
	return map[string]any{"Address": netip.PrefixFrom(a, bits).String()}, nil
}

// vethNames are the endpoint's host and container ends' names.
func vethNames(endpointID string) (host, peer string) {
	if len(endpointID) > 10 {
		endpointID = endpointID[:10]
	}
	return "nul" + endpointID, "nup" + endpointID
}

func (d *driver) createEndpoint(req map[string]any) (any, error) {
	id := str(req, "EndpointID")
	iface, _ := req["Interface"].(map[string]any)
	addr, err := netip.ParsePrefix(str(iface, "Address"))
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: no IPv4 address: %w", id, err)
	}
	gw := gateways{gw4: addr.Masked().Addr().Next()}
	if a6 := str(iface, "AddressIPv6"); a6 != "" {
		addr6, err := netip.ParsePrefix(a6)
		if err != nil {
			return nil, fmt.Errorf("endpoint %s: IPv6 address: %w", id, err)
		}
		gw.gw6 = addr6.Masked().Addr().Next()
	}
	host, peer := vethNames(id)
	la := netlink.NewLinkAttrs()
	la.Name = host
	la.Flags = net.FlagUp
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer}); err != nil {
		return nil, fmt.Errorf("create veth %s: %w", host, err)
	}
	d.mu.Lock()
	d.peers[id] = host
	d.gateways[id] = gw
	d.mu.Unlock()
	return map[string]any{}, nil
}

func (d *driver) join(req map[string]any) (any, error) {
	id := str(req, "EndpointID")
	_, peer := vethNames(id)
	d.mu.Lock()
	gw, ok := d.gateways[id]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("join: unknown endpoint %s", id)
	}
	resp := map[string]any{
		"InterfaceName": map[string]any{"SrcName": peer, "DstPrefix": "eth"},
		"Gateway":       gw.gw4.String(),
	}
	if gw.gw6.IsValid() {
		resp["GatewayIPv6"] = gw.gw6.String()
	}
	return resp, nil
}

func (d *driver) deleteEndpoint(req map[string]any) (any, error) {
	id := str(req, "EndpointID")
	d.mu.Lock()
	host := d.peers[id]
	delete(d.peers, id)
	delete(d.gateways, id)
	d.mu.Unlock()
	if host == "" {
		return map[string]any{}, nil
	}
	// Deleting a device waits for an RCU barrier (~20 ms): off Docker's
	// path, as ebpfnet does it, or the floor would stand above ebpfnet.
	d.deletions.Add(1)
	go func() {
		defer d.deletions.Done()
		if link, err := netlink.LinkByName(host); err == nil {
			if err := netlink.LinkDel(link); err != nil {
				log.Printf("delete veth %s: %v", host, err)
			}
		}
	}()
	return map[string]any{}, nil
}

// deleteAll removes the veths of endpoints Docker never deleted.
func (d *driver) deleteAll() {
	d.deletions.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, host := range d.peers {
		if link, err := netlink.LinkByName(host); err == nil {
			_ = netlink.LinkDel(link)
		}
	}
}
