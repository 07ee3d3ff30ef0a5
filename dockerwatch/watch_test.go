package dockerwatch

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	dockerclient "github.com/docker/docker/client"
	"github.com/sirupsen/logrus"
)

// fakeDocker answers the few calls the watcher makes, and refuses API
// versions outside [min, max] with the errors dockerd gives: 20.10 knows
// nothing newer than 1.41, and 29.0-29.2 refuse anything older than 1.44.
type fakeDocker struct {
	min, max string
	// seen collects the API versions of the calls, for the failure message.
	seen chan string
}

var versioned = regexp.MustCompile(`^/v([0-9]+\.[0-9]+)(/.*)$`)

// apiLess compares API versions such as 1.9 and 1.41 as numbers.
func apiLess(a, b string) bool {
	am, an, _ := strings.Cut(a, ".")
	bm, bn, _ := strings.Cut(b, ".")
	ai, _ := strconv.Atoi(am)
	bi, _ := strconv.Atoi(bm)
	if ai != bi {
		return ai < bi
	}
	aj, _ := strconv.Atoi(an)
	bj, _ := strconv.Atoi(bn)
	return aj < bj
}

func (f *fakeDocker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("API-Version", f.max)
	if r.URL.Path == "/_ping" {
		fmt.Fprint(w, "OK")
		return
	}
	m := versioned.FindStringSubmatch(r.URL.Path)
	if m == nil {
		// An unversioned call is served at the daemon's own version.
		m = []string{r.URL.Path, f.max, r.URL.Path}
	}
	version, path := m[1], m[2]
	select {
	case f.seen <- version:
	default:
	}
	switch {
	case apiLess(version, f.min):
		httpError(w, fmt.Sprintf("client version %s is too old. Minimum supported API version is %s, please upgrade your client to a newer version", version, f.min))
		return
	case apiLess(f.max, version):
		httpError(w, fmt.Sprintf("client version %s is too new. Maximum supported API version is %s", version, f.max))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch path {
	case "/events":
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	case "/containers/json":
		fmt.Fprint(w, `[{"Id": "c1", "Names": ["/app1"]}]`)
	case "/containers/c1/json":
		fmt.Fprint(w, `{"Id": "c1", "Name": "/app1", "Config": {"Labels": {"id": "app1"}},
			"NetworkSettings": {"Networks": {"net1": {"NetworkID": "n1", "EndpointID": "e1"}}}}`)
	default:
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"message": "no fake for %s"}`, path)
	}
}

func httpError(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

// serveFake serves f on a unix socket and points DOCKER_HOST at it.
// serveFake serves f on a socket of its own, which DOCKER_HOST names, and
// returns its address.
func serveFake(t *testing.T, f *fakeDocker) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	t.Setenv("DOCKER_HOST", "unix://"+socket)
	t.Setenv("DOCKER_API_VERSION", "")
	return "unix://" + socket
}

var (
	docker2010 = fakeDocker{min: "1.12", max: "1.41"}
	docker29   = fakeDocker{min: "1.44", max: "1.52"}
)

// TestWatcherNegotiatesTheAPIVersion: the watcher learns a running
// container's labels from Docker 20.10 and from Docker 29, whose accepted
// API versions do not overlap with any single client version.
func TestWatcherNegotiatesTheAPIVersion(t *testing.T) {
	for name, fake := range map[string]fakeDocker{"20.10": docker2010, "29": docker29} {
		t.Run(name, func(t *testing.T) {
			f := fake
			f.seen = make(chan string, 100)
			host := serveFake(t, &f)
			if name == "29" {
				// --docker-host wins over DOCKER_HOST.
				t.Setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
			} else {
				host = ""
			}
			log := logrus.New()
			log.SetOutput(io.Discard)
			w, err := New(log, host)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got := make(chan Attachment, 1)
			go w.Run(ctx, func(a Attachment) bool {
				select {
				case got <- a:
				default:
				}
				return true
			})
			select {
			case a := <-got:
				if a.Container.Labels["id"] != "app1" || a.Container.Name != "app1" || a.NetworkID != "n1" || a.EndpointID != "e1" {
					t.Errorf("attachment %+v, want app1's labels on n1/e1", a)
				}
			case <-ctx.Done():
				t.Fatalf("no attachment from Docker %s (API %s to %s); the client called with versions %v", name, f.min, f.max, drain(f.seen))
			}
		})
	}
}

// TestFakeDockerRefusesClientsThatDoNotNegotiate: the fakes above refuse
// what the real daemons refuse, so the test above would fail for a client
// that kept its own default version, or one pinned to 20.10's.
func TestFakeDockerRefusesClientsThatDoNotNegotiate(t *testing.T) {
	for _, c := range []struct {
		fake fakeDocker
		opts []dockerclient.Opt
		want string
	}{
		{docker2010, nil, "is too new"},
		{docker29, []dockerclient.Opt{dockerclient.WithVersion("1.41")}, "is too old"},
	} {
		f := c.fake
		serveFake(t, &f)
		cli, err := dockerclient.NewClientWithOpts(append([]dockerclient.Opt{dockerclient.FromEnv}, c.opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		_, err = cli.ContainerInspect(context.Background(), "c1")
		cli.Close()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("a client without negotiation against API %s-%s: %v; want an error saying it %s", f.min, f.max, err, c.want)
		}
	}
}

func drain(c chan string) []string {
	var out []string
	for {
		select {
		case v := <-c:
			out = append(out, v)
		default:
			return out
		}
	}
}
