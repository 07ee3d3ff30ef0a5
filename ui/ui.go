// Package ui serves the service map: one page, embedded in the binary (no
// CDN, nothing fetched from elsewhere), and the JSON it draws from, kept
// live with server-sent events. It knows nothing of the datapath: the
// daemon hands it a Source.
package ui

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ebpfnet/ebpfnet/servicemap"
)

// Snapshot is what the page shows at one moment.
type Snapshot struct {
	Graph  servicemap.Graph  `json:"graph"`
	Matrix servicemap.Matrix `json:"matrix"`
}

// Source produces a snapshot of the daemon's state. It is called only
// while someone looks: a page is open or the API is asked.
type Source interface {
	Snapshot(ctx context.Context) (Snapshot, error)
}

// Logger takes the errors of the source; logrus loggers are one.
type Logger interface {
	Warnf(format string, args ...any)
}

// Config tunes the handler.
type Config struct {
	// Interval is how often an open page is updated (when anything
	// changed); 0 is DefaultInterval.
	Interval time.Duration
	// AllowRemote serves any Host header. Without it, only loopback
	// names are answered, so that a web page elsewhere cannot read the
	// map through a name of its own that resolves to 127.0.0.1 (DNS
	// rebinding).
	AllowRemote bool
	Log         Logger
}

// DefaultInterval is how often an open page is updated.
const DefaultInterval = 2 * time.Second

//go:embed static
var static embed.FS

// NewHandler serves the page at / and its JSON under /api/.
func NewHandler(src Source, cfg Config) http.Handler {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	s := &server{cfg: cfg, src: &sharedSource{src: src, maxAge: cfg.Interval / 2}}
	files, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServerFS(files))
	mux.HandleFunc("GET /api/snapshot", s.snapshot(func(sn Snapshot) any { return sn }))
	mux.HandleFunc("GET /api/graph", s.snapshot(func(sn Snapshot) any { return sn.Graph }))
	mux.HandleFunc("GET /api/matrix", s.snapshot(func(sn Snapshot) any { return sn.Matrix }))
	mux.HandleFunc("GET /api/events", s.events)
	return s.guard(mux)
}

type server struct {
	cfg Config
	src *sharedSource
}

// guard refuses foreign Host headers and sets the headers every answer
// carries: the page runs only its own script and styles.
func (s *server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.cfg.AllowRemote && !LoopbackHost(r.Host) {
			http.Error(w, fmt.Sprintf("host %q is not a loopback name: the service map answers 127.0.0.1, [::1] and localhost only (the daemon's --ui-allow-remote lifts this)", r.Host), http.StatusForbidden)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

// LoopbackHost reports whether a Host header names this machine's
// loopback: localhost or a loopback address, with or without a port.
func LoopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *server) snapshot(part func(Snapshot) any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sn, err := s.src.get(r.Context())
		if err != nil {
			s.warn("service map: %v", err)
			writeJSON(w, http.StatusInternalServerError, map[string]string{"message": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, part(sn))
	}
}

// keepAlive is how often an unchanged stream says it is alive, so that
// proxies and the browser do not take it for dead.
const keepAlive = 15 * time.Second

// events streams the snapshot as server-sent events, the graph and the
// matrix each on its own ("graph", "matrix"): both at once, then each
// whenever it changed, looked at every Interval. The graph changes with
// every flow; the matrix, which may be large in a cluster, only with
// endpoints and policy. EventSource reconnects by itself when the daemon
// restarts.
func (s *server) events(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	ticker := time.NewTicker(s.cfg.Interval)
	defer ticker.Stop()
	last := map[string][]byte{}
	lastSent := time.Now()
	for {
		sn, err := s.src.get(r.Context())
		switch {
		case r.Context().Err() != nil:
			return
		case err != nil:
			s.warn("service map: %v", err)
			if !writeEvent(w, "problem", []byte(jsonString(err.Error()))) {
				return
			}
			flusher.Flush()
		default:
			sent := false
			for _, part := range []struct {
				name string
				v    any
			}{{"matrix", sn.Matrix}, {"graph", sn.Graph}} {
				data, err := json.Marshal(part.v)
				if err != nil {
					s.warn("service map: encode: %v", err)
					return
				}
				if bytes.Equal(data, last[part.name]) {
					continue
				}
				if !writeEvent(w, part.name, data) {
					return
				}
				last[part.name], sent = data, true
			}
			if sent {
				lastSent = time.Now()
				flusher.Flush()
			} else if time.Since(lastSent) >= keepAlive {
				if _, err := fmt.Fprint(w, ": alive\n\n"); err != nil {
					return
				}
				lastSent = time.Now()
				flusher.Flush()
			}
		}
		select {
		case <-r.Context().Done():
			return
		case <-ticker.C:
		}
	}
}

// writeEvent writes one server-sent event; data must hold no newline
// (JSON from encoding/json holds none).
func writeEvent(w http.ResponseWriter, name string, data []byte) bool {
	_, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, data)
	return err == nil
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func (s *server) warn(format string, args ...any) {
	if s.cfg.Log != nil {
		s.cfg.Log.Warnf(format, args...)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// sharedSource asks the source at most once per maxAge however many pages
// are open: a snapshot reads every endpoint's policy map and the
// conntrack table.
type sharedSource struct {
	src    Source
	maxAge time.Duration

	mu   sync.Mutex
	at   time.Time
	last Snapshot
}

func (c *sharedSource) get(ctx context.Context) (Snapshot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < c.maxAge {
		return c.last, nil
	}
	sn, err := c.src.Snapshot(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	c.at, c.last = time.Now(), sn
	return sn, nil
}

// CheckAddr refuses an address the map should not be served on: not
// host:port, a host that is no IP address or localhost, or one that is not
// loopback without allowRemote. The map names every container and flow
// and asks for no password.
func CheckAddr(addr string, allowRemote bool) error {
	host, port, err := net.SplitHostPort(addr)
	if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil {
		return fmt.Errorf("--ui-addr %q is not host:port (e.g. 127.0.0.1:9966)", addr)
	}
	if allowRemote {
		return nil
	}
	if host == "" {
		return fmt.Errorf("--ui-addr %q listens on every interface: the service map shows every container's labels and flows to whoever reaches it, without a password; give a loopback address (127.0.0.1:%s), or add --ui-allow-remote to serve it there anyway", addr, port)
	}
	if !strings.EqualFold(host, "localhost") {
		ip := net.ParseIP(host)
		if ip == nil {
			return fmt.Errorf("--ui-addr %q: give an IP address or localhost, not a name", addr)
		}
		if !ip.IsLoopback() {
			return fmt.Errorf("--ui-addr %q is not a loopback address: the service map shows every container's labels and flows to whoever reaches it, without a password; add --ui-allow-remote to serve it there anyway", addr)
		}
	}
	return nil
}
