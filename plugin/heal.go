package plugin

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/dockerid"
	"github.com/ebpfnet/ebpfnet/driver"
	"github.com/ebpfnet/ebpfnet/endpoint"
	"github.com/ebpfnet/ebpfnet/external"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/ipam"
	"github.com/ebpfnet/ebpfnet/labels"
	"github.com/ebpfnet/ebpfnet/policy"
)

// State that heals. The lib directory's files are written atomically, so
// a torn write cannot corrupt them, but a disk fault or a person can. A
// file that does not decode, or one missing on a node that has endpoints
// or networks (a fresh node has neither), is moved aside and what it held
// is rebuilt from what still knows it, before its owner loads it:
//
//   - networks.json from the endpoints' records (ID, index, subnet,
//     gateway, MTU of every network that has an endpoint), --internal and
//     masquerade from our iptables rules; marked rebuilt until Docker
//     confirms the options (its endpoints keep their policy meanwhile,
//     new ones deny all). Networks without endpoints come from Docker.
//   - ipam.json from the records (pools, gateways, addresses), pending:
//     no pool or address is handed out until Docker has said which
//     addresses it holds (ip-ranges, aux addresses, every container).
//   - identities.json: the numbers the restored endpoints carry are
//     adopted, the CIDR identities from the pinned ipcache's prefixes.
//   - policy.json cannot be rebuilt: compiled maps are not rules. It is
//     marked lost; every restored endpoint keeps its pinned policy, new
//     endpoints deny both ways, `ebpfnet status` and the log say "policy
//     lost, re-import", until `policy import` or `policy delete --all`.
//   - external.json from our DNAT rules (endpoint and mapping in each);
//     endpoints whose rules are gone too get Docker's port bindings
//     programmed again.
//
// Nothing here calls Docker: dockerd may be waiting for our socket. What
// only Docker knows is asked in the background, with reconcile
// (healFromDocker).

// Names of the lib directory's state files.
const (
	networksFile   = "networks.json"
	ipamFile       = "ipam.json"
	identitiesFile = "identities.json"
	policyFile     = "policy.json"
	externalFile   = "external.json"
)

// healing is what start rebuilt and what is left for Docker to tell.
type healing struct {
	mu    sync.Mutex
	files []api.HealedFile
	// What waits for Docker: networks' options and the networks without
	// endpoints, the pools, published ports whose rules were lost.
	networks, ipam, external bool
}

// report is what status shows.
func (h *healing) report() []api.HealedFile {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]api.HealedFile, len(h.files))
	for i, f := range h.files {
		f.NotRebuilt = append([]string(nil), f.NotRebuilt...)
		out[i] = f
	}
	return out
}

// waitsForDocker says whether anything is left for Docker to tell.
func (h *healing) waitsForDocker() bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.networks || h.ipam || h.external
}

// add records a rebuilt file.
func (h *healing) add(f api.HealedFile) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.files = append(h.files, f)
}

// dockerDone records what Docker told for file, and that it no longer
// waits.
func (h *healing) dockerDone(file, told string, notRebuilt []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.files {
		if h.files[i].File != file {
			continue
		}
		h.files[i].WaitingForDocker = false
		h.files[i].Rebuilt += "; " + told
		h.files[i].NotRebuilt = append(h.files[i].NotRebuilt, notRebuilt...)
	}
	switch file {
	case networksFile:
		h.networks = false
	case ipamFile:
		h.ipam = false
	case externalFile:
		h.external = false
	}
}

// fileFault is what was found wrong with a state file.
type fileFault struct {
	name    string
	corrupt error // nil: missing
	movedTo string
	// detail, when set, says what is wrong instead of "missing" or
	// "corrupt" (ipam.json's live copy, healIPAM).
	detail string
}

func (f fileFault) String() string {
	if f.detail != "" {
		return f.detail
	}
	if f.corrupt != nil {
		return "corrupt: " + f.corrupt.Error()
	}
	return "missing"
}

// healLibDir checks every state file of the lib directory and rebuilds the
// faulty ones in place, so that their owners load the rebuilt state. A
// file that cannot be read at all (permissions, I/O) stops the start, as
// before: nothing can be decided about it.
func (d *Daemon) healLibDir() (*healing, error) {
	h := &healing{}
	log := d.log.WithField("subsys", "heal")
	path := func(name string) string { return filepath.Join(d.cfg.LibDir, name) }
	records, err := d.datapath.Records()
	if err != nil {
		return nil, fmt.Errorf("read the endpoints' records: %w", err)
	}
	nets, netErr := driver.CheckState(path(networksFile))
	// Evidence that this node had state: endpoints, or networks (a
	// network state that does not decode says so too).
	evidence := len(records) > 0 || nets > 0 || errors.Is(netErr, atomicfile.ErrCorrupt)

	checks := []struct {
		name  string
		check func(string) error
	}{
		{networksFile, func(p string) error { _, err := driver.CheckState(p); return err }},
		{identitiesFile, func(p string) error { _, err := identity.NewFileAllocator(p); return err }},
		{policyFile, func(p string) error { _, err := policy.NewRepository(p); return err }},
	}
	if d.cfg.External {
		checks = append(checks, struct {
			name  string
			check func(string) error
		}{externalFile, external.CheckState})
	}
	now := time.Now()
	faults := map[string]fileFault{}
	for _, c := range checks {
		p := path(c.name)
		_, statErr := os.Stat(p)
		switch {
		case errors.Is(statErr, fs.ErrNotExist):
			if c.name == policyFile && !evidence {
				// A fresh node: write the empty policy, so that a
				// policy.json missing later means a lost one.
				if err := writeEmptyPolicy(p); err != nil {
					return nil, err
				}
			}
			if evidence {
				faults[c.name] = fileFault{name: c.name}
				log.WithField("file", p).WithField("endpoints", len(records)).
					Warn("state file is missing on a node that has endpoints or networks; rebuilding it")
			}
			continue
		case statErr != nil:
			return nil, fmt.Errorf("state file %s: %w", p, statErr)
		}
		corrupt := c.check(p)
		if corrupt == nil {
			continue
		}
		if !errors.Is(corrupt, atomicfile.ErrCorrupt) {
			return nil, fmt.Errorf("state file %s: %w", p, corrupt)
		}
		aside, err := moveAsideCorrupt(log, p, corrupt, now, "state file is corrupt: moved aside; rebuilding what it held")
		if err != nil {
			return nil, err
		}
		faults[c.name] = fileFault{name: c.name, corrupt: corrupt, movedTo: aside}
	}
	if f, err := d.checkIPAM(log, len(records) > 0, evidence, now, h); err != nil {
		return nil, err
	} else if f != nil {
		faults[ipamFile] = *f
	}
	if len(faults) == 0 {
		return h, nil
	}

	r := &rebuild{d: d, log: log, records: records, path: path}
	if d.cfg.External && (faults[networksFile].name != "" || faults[externalFile].name != "") {
		rules, err := external.Recover(external.Config{ChainPrefix: chainPrefix(d.cfg.DriverName), Log: log})
		if err != nil {
			log.WithError(err).Warn("read our iptables rules back; rebuilding without them")
		} else {
			r.rules, r.haveRules = rules, true
		}
	}
	steps := []struct {
		name string
		fn   func() (string, []string, error)
		// waits says Docker completes the file (healFromDocker).
		waits *bool
	}{
		{networksFile, r.networks, &h.networks},
		{ipamFile, r.ipam, &h.ipam},
		{identitiesFile, r.identities, nil},
		{policyFile, r.policy, nil},
		{externalFile, r.external, &h.external},
	}
	for _, s := range steps {
		f, ok := faults[s.name]
		if !ok {
			continue
		}
		r.fault = f
		rebuilt, notRebuilt, err := s.fn()
		if err != nil {
			return nil, fmt.Errorf("rebuild %s: %w", path(s.name), err)
		}
		hf := api.HealedFile{File: s.name, Fault: f.String(), MovedTo: f.movedTo, Rebuilt: rebuilt, NotRebuilt: notRebuilt}
		if s.waits != nil {
			*s.waits = true
			hf.WaitingForDocker = true
		}
		h.add(hf)
		entry := log.WithFields(logrus.Fields{"file": path(s.name), "rebuilt": rebuilt})
		if len(notRebuilt) > 0 {
			entry = entry.WithField("notRebuilt", strings.Join(notRebuilt, "; "))
		}
		entry.Warn("state file rebuilt")
	}
	if h.waitsForDocker() && !d.cfg.Reconcile {
		log.Warn("state rebuilt, but Docker is not asked (reconcile is off): what only Docker knows stays missing, and no address is handed out")
	}
	return h, nil
}

// moveAsideCorrupt moves the corrupt file path aside, and logs msg with
// the cause and where the file went.
func moveAsideCorrupt(log logrus.FieldLogger, path string, cause error, now time.Time, msg string) (string, error) {
	aside, err := atomicfile.MoveAside(path, now)
	if err != nil {
		return "", fmt.Errorf("state file %s is corrupt and cannot be moved aside: %w (%w)", path, err, cause)
	}
	log.WithError(cause).WithFields(logrus.Fields{"file": path, "movedTo": aside}).Warn(msg)
	return aside, nil
}

// writeEmptyPolicy writes the empty policy of a fresh node.
func writeEmptyPolicy(path string) error {
	repo, err := policy.NewRepository(path)
	if err != nil {
		return err
	}
	return repo.Persist()
}

// rebuild holds what the rebuilding steps read from.
type rebuild struct {
	d         *Daemon
	log       logrus.FieldLogger
	records   []datapath.Endpoint
	path      func(string) string
	rules     external.Recovered
	haveRules bool
	fault     fileFault
}

// networks rebuilds networks.json from the records: one network per
// Docker network ID, its index, subnet, gateway and MTU as its endpoints
// run with them; --internal and masquerade from our rules.
func (r *rebuild) networks() (string, []string, error) {
	var out []driver.RebuiltNetwork
	var notRebuilt []string
	byID := map[string]datapath.Network{}
	byIndex := map[uint32]string{}
	for _, ep := range r.records {
		id := ep.DockerNetworkID
		if have, ok := byID[id]; ok {
			if have != ep.Network {
				notRebuilt = append(notRebuilt, fmt.Sprintf("endpoint %d says network %s is %+v, an earlier one %+v: kept the earlier", ep.ID, dockerid.Short(id), ep.Network, have))
			}
			continue
		}
		if other, ok := byIndex[ep.Network.Index]; ok {
			notRebuilt = append(notRebuilt, fmt.Sprintf("networks %s and %s both have index %d: %s left to Docker", dockerid.Short(other), dockerid.Short(id), ep.Network.Index, dockerid.Short(id)))
			continue
		}
		byID[id], byIndex[ep.Network.Index] = ep.Network, id
		n := driver.RebuiltNetwork{ID: id, Datapath: ep.Network}
		switch rn, ok := r.rules.Networks[dockerid.Short(id)]; {
		case ok:
			n.Internal = rn.Internal
			if !rn.Internal && !rn.Masquerade {
				n.Options = map[string]string{external.OptionMasquerade: "false"}
			}
		case r.d.cfg.External:
			// Nothing shows whether it is --internal: no way off
			// the node until Docker says.
			n.Internal = true
			notRebuilt = append(notRebuilt, fmt.Sprintf("network %s: no rule shows whether it is --internal; isolated until Docker says", dockerid.Short(id)))
		}
		out = append(out, n)
	}
	if err := driver.WriteRebuilt(r.path(networksFile), out); err != nil {
		return "", nil, err
	}
	notRebuilt = append(notRebuilt, "networks' options (-o), until Docker is asked; networks without endpoints, until Docker is asked")
	return fmt.Sprintf("%d networks from %d endpoint records", len(out), len(r.records)), notRebuilt, nil
}

// ipam rebuilds ipam.json and its live copy from the records, pending: one pool per network
// subnet, its gateway and the endpoints' addresses.
func (r *rebuild) ipam() (string, []string, error) {
	bySubnet := map[netip.Prefix]*ipam.PoolSeed{}
	var order []netip.Prefix
	for _, ep := range r.records {
		for _, f := range []struct {
			subnet  netip.Prefix
			gateway netip.Addr
			addr    netip.Prefix
		}{{ep.Network.Subnet, ep.Network.Gateway, ep.IPv4}, {ep.Network.Subnet6, ep.Network.Gateway6, ep.IPv6}} {
			if !f.subnet.IsValid() || !f.addr.IsValid() {
				continue
			}
			subnet := f.subnet.Masked()
			s, ok := bySubnet[subnet]
			if !ok {
				s = &ipam.PoolSeed{Pool: subnet, Gateway: f.gateway}
				bySubnet[subnet] = s
				order = append(order, subnet)
			}
			s.Addresses = append(s.Addresses, f.addr.Addr())
		}
	}
	seeds := make([]ipam.PoolSeed, 0, len(order))
	addresses := 0
	for _, p := range order {
		seeds = append(seeds, *bySubnet[p])
		addresses += len(bySubnet[p].Addresses)
	}
	st, problems := ipam.RebuiltState(seeds)
	var notRebuilt []string
	for _, p := range problems {
		notRebuilt = append(notRebuilt, p.Error())
	}
	if err := (&ipam.MirrorStore{Durable: r.path(ipamFile), Volatile: r.d.ipamLivePath()}).Save(st); err != nil {
		return "", nil, err
	}
	notRebuilt = append(notRebuilt, "ip-ranges, aux addresses and addresses of containers without an endpoint here, until Docker is asked (no address is handed out meanwhile)")
	return fmt.Sprintf("%d pools, %d endpoint addresses from the endpoint records", len(st.Pools), addresses), notRebuilt, nil
}

// identities rebuilds identities.json: the label identities the records
// carry and the CIDR identities the pinned ipcache holds keep their
// numbers.
func (r *rebuild) identities() (string, []string, error) {
	var notRebuilt []string
	ids := map[identity.ID]labels.Labels{}
	for _, ep := range r.records {
		id := identity.ID(ep.Identity)
		if id.Kind() != identity.KindAllocated {
			continue // init or reserved: nothing to number
		}
		ls := labels.FromDocker(ep.Labels)
		if have, ok := ids[id]; ok && !have.Equal(ls) {
			notRebuilt = append(notRebuilt, fmt.Sprintf("identity %d: endpoint %d has labels %s, an earlier one %s", id, ep.ID, ls, have))
			continue
		}
		ids[id] = ls
	}
	cidrs := map[identity.ID]netip.Prefix{}
	pinned, err := r.d.datapath.IPCache()
	if err != nil {
		notRebuilt = append(notRebuilt, "CIDR identities: "+err.Error())
	}
	for p, e := range pinned {
		if e.Identity.Kind() != identity.KindCIDR || e.TunnelEndpoint.IsValid() {
			continue
		}
		if have, ok := cidrs[e.Identity]; ok && have != p {
			notRebuilt = append(notRebuilt, fmt.Sprintf("CIDR identity %d is pinned for %s and %s", e.Identity, have, p))
			continue
		}
		cidrs[e.Identity] = p
	}
	alloc, err := identity.NewFileAllocator(r.path(identitiesFile))
	if err != nil {
		return "", nil, err
	}
	refused, err := alloc.Adopt(ids, cidrs)
	if err != nil {
		return "", nil, err
	}
	for _, e := range refused {
		notRebuilt = append(notRebuilt, e.Error()+" (numbered anew)")
	}
	return fmt.Sprintf("%d label identities from the endpoint records, %d CIDR identities from the pinned ipcache",
		len(alloc.All()), len(alloc.CIDRs())), notRebuilt, nil
}

// policy marks policy.json lost: compiled maps cannot be turned back into
// rules.
func (r *rebuild) policy() (string, []string, error) {
	repo, err := policy.NewRepository(r.path(policyFile))
	if err != nil {
		return "", nil, err
	}
	why := fmt.Sprintf("%s was %s at %s", policyFile, r.fault, time.Now().UTC().Format(time.RFC3339))
	if err := repo.MarkLost(why); err != nil {
		return "", nil, err
	}
	return "nothing: compiled policy cannot be turned back into rules; restored endpoints keep their pinned policy, new endpoints deny all",
		[]string{"the rules: policy lost, re-import with `ebpfnet policy import` (or `ebpfnet policy delete --all` if there were none)"}, nil
}

// external rebuilds external.json from our DNAT rules.
func (r *rebuild) external() (string, []string, error) {
	refs := make([]external.EndpointRef, 0, len(r.records))
	for _, ep := range r.records {
		refs = append(refs, external.EndpointRef{ID: ep.DockerEndpointID, NetworkID: ep.DockerNetworkID, IfName: ep.IfName})
	}
	n, err := external.Rebuild(external.Config{StatePath: r.path(externalFile)}, r.rules, refs)
	if err != nil {
		return "", nil, err
	}
	var notRebuilt []string
	if !r.haveRules {
		notRebuilt = append(notRebuilt, "our iptables rules could not be read")
	}
	notRebuilt = append(notRebuilt, "published ports of endpoints whose rules are gone too, until Docker is asked")
	return fmt.Sprintf("published ports of %d endpoints from our iptables rules", n), notRebuilt, nil
}

// problems are what needs the operator now, for status.
func (d *Daemon) problems() []string {
	var out []string
	if lr, ok := d.rules.(endpoint.LostRules); ok {
		switch why, lost := lr.Lost(); {
		case lost && d.cluster != nil:
			// The rules come back from etcd by themselves.
			out = append(out, "policy lost: "+why+"; restored endpoints keep their pinned policy, new endpoints deny all until etcd's rules arrive")
		case lost:
			out = append(out, "policy lost, re-import: "+why+"; restored endpoints keep their pinned policy, new endpoints deny all until `ebpfnet policy import` or `ebpfnet policy delete --all`")
		}
	}
	if d.ipam.Pending() {
		out = append(out, "IPAM state rebuilt, waiting for Docker to say which addresses are in use: no address is handed out yet")
	}
	for _, n := range d.driver.Networks() {
		if n.Rebuilt {
			out = append(out, fmt.Sprintf("network %s rebuilt, waiting for Docker to confirm its options: its endpoints keep their policy, new ones deny all", dockerid.Short(n.ID)))
		}
	}
	return out
}

// ipamLivePath is the live copy of ipam.json (ipam.MirrorStore): in the
// run directory, beside the daemon's lock and API socket.
func (d *Daemon) ipamLivePath() string {
	return filepath.Join(filepath.Dir(d.cfg.APISocket), ipamFile)
}

// checkIPAM checks ipam.json and its live copy, and returns the fault to
// rebuild from the records, if any. Copies that do not decode go aside.
// The two copies cover each other:
//
//   - the live copy sound: it holds everything, and a durable copy that
//     is lost is written again from it, here;
//   - the live copy lost while endpoints run: the durable copy's
//     addresses trail the live ones, so addresses in use may be missing:
//     rebuilt as if ipam.json were lost;
//   - the live copy gone with no endpoint left (a reboot): the durable
//     copy is the state;
//   - the durable copy lost on a node with state, and no live copy:
//     rebuilt.
func (d *Daemon) checkIPAM(log logrus.FieldLogger, endpoints, evidence bool, now time.Time, h *healing) (*fileFault, error) {
	durable, live := filepath.Join(d.cfg.LibDir, ipamFile), d.ipamLivePath()
	c, err := ipam.CheckMirror(durable, live)
	if err != nil {
		return nil, fmt.Errorf("state file %s: %w", durable, err)
	}
	var fault fileFault
	if errors.Is(c.VolatileErr, atomicfile.ErrCorrupt) {
		aside, err := moveAsideCorrupt(log, live, c.VolatileErr, now, "live copy of the IPAM state is corrupt: moved aside")
		if err != nil {
			return nil, err
		}
		fault = fileFault{name: ipamFile, corrupt: c.VolatileErr, movedTo: aside,
			detail: "live copy " + live + " corrupt: " + c.VolatileErr.Error()}
	}
	if errors.Is(c.DurableErr, atomicfile.ErrCorrupt) {
		aside, err := moveAsideCorrupt(log, durable, c.DurableErr, now, "state file is corrupt: moved aside; rebuilding what it held")
		if err != nil {
			return nil, err
		}
		fault = fileFault{name: ipamFile, corrupt: c.DurableErr, movedTo: aside}
	}
	durableLost := c.DurableErr != nil
	switch {
	case c.VolatileErr == nil:
		if !durableLost {
			return nil, nil // both sound: the newer is the state
		}
		// The live copy holds it all: both copies are written from it.
		store := &ipam.MirrorStore{Durable: durable, Volatile: live}
		st, err := store.Load()
		if err == nil {
			err = store.Save(st)
		}
		if err != nil {
			return nil, fmt.Errorf("write %s again from its live copy %s: %w", durable, live, err)
		}
		if fault.name == "" {
			fault = fileFault{name: ipamFile}
		}
		h.add(api.HealedFile{File: ipamFile, Fault: fault.String(), MovedTo: fault.movedTo, Rebuilt: "everything, from its live copy " + live})
		log.WithFields(logrus.Fields{"file": durable, "from": live}).Warn("state file written again from its live copy")
		return nil, nil
	case durableLost:
		if !evidence {
			return nil, nil // a fresh node
		}
		if fault.name == "" {
			fault = fileFault{name: ipamFile}
			log.WithField("file", durable).Warn("state file is missing on a node that has endpoints or networks; rebuilding it")
		}
		return &fault, nil
	case c.DurableTrails && endpoints:
		if fault.name == "" {
			fault = fileFault{name: ipamFile, detail: "live copy " + live + " missing"}
		}
		log.WithField("file", live).Warn("live copy of the IPAM state is missing while endpoints run: addresses in use may be missing from " + durable + "; rebuilding it")
		return &fault, nil
	default:
		// No live copy and no endpoint (the machine restarted), or a
		// durable copy that holds every address (an earlier version's).
		return nil, nil
	}
}
