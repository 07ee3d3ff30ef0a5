package plugin

import (
	"net/http"
	"strings"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/metrics"
)

// conntrackRoutes serves GET /v1/bpf/ct (`ebpfnet bpf ct list`) beside the
// rest of the local API.
func conntrackRoutes(localAPI http.Handler, dp *datapath.Datapath) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", localAPI)
	mux.HandleFunc("GET /v1/bpf/ct", func(w http.ResponseWriter, _ *http.Request) {
		flows, err := dp.Conntrack()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, api.Error{Message: err.Error()})
			return
		}
		out := make([]api.ConntrackEntry, 0, len(flows))
		for _, f := range flows {
			out = append(out, toAPIConntrack(f))
		}
		writeJSON(w, http.StatusOK, out)
	})
	return mux
}

func toAPIConntrack(f datapath.CTFlow) api.ConntrackEntry {
	return api.ConntrackEntry{
		Protocol:            strings.ToUpper(protocolName(f.Proto)),
		Source:              f.Src.String(),
		Destination:         f.Dst.String(),
		State:               string(f.State),
		ExpiresInSeconds:    int64(f.Expires.Seconds()),
		SourceEndpoint:      f.SrcEndpoint,
		DestinationEndpoint: f.DstEndpoint,
	}
}

// conntrackMetrics shows the conntrack garbage collector's findings to the
// metrics package.
type conntrackMetrics struct{ gc *datapath.CTGC }

func (c conntrackMetrics) ConntrackStats() []metrics.ConntrackStats {
	s := c.gc.Stats()
	return []metrics.ConntrackStats{{
		Family:      "ipv4",
		MapName:     datapath.CTMapName,
		MaxEntries:  s.MaxEntries,
		Alive:       s.Alive,
		Deleted:     s.Deleted,
		Completed:   s.Completed,
		Uncompleted: s.Uncompleted,
	}, {
		Family:      "ipv6",
		MapName:     datapath.CT6MapName,
		MaxEntries:  s.IPv6.MaxEntries,
		Alive:       s.IPv6.Alive,
		Deleted:     s.IPv6.Deleted,
		Completed:   s.Completed,
		Uncompleted: s.Uncompleted,
	}}
}
