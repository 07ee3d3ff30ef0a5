package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Client talks to a daemon's local API over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &Client{
		socket: socket,
		http: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return dialer.DialContext(ctx, "unix", socket)
				},
			},
		},
	}
}

// Get fetches path (e.g. "/v1/status") into out.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.send(ctx, http.MethodGet, path, nil, out)
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.Get(ctx, "/v1/status", &s)
}

// Endpoints lists the endpoints, ordered by ID.
func (c *Client) Endpoints(ctx context.Context) ([]Endpoint, error) {
	var eps []Endpoint
	return eps, c.Get(ctx, "/v1/endpoints", &eps)
}

// Endpoint returns one endpoint by its node-local ID.
func (c *Client) Endpoint(ctx context.Context, id uint16) (Endpoint, error) {
	var ep Endpoint
	return ep, c.Get(ctx, fmt.Sprintf("/v1/endpoints/%d", id), &ep)
}

// send issues a request with an optional JSON body and decodes the answer.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://ebpfnet"+path, body)
	if err != nil {
		return fmt.Errorf("build request %s: %w", path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reach the ebpfnet daemon at %s (is `ebpfnet daemon` running?): %w", c.socket, err)
	}
	defer resp.Body.Close()
	return decodeAnswer(resp, path, out)
}

func decodeAnswer(resp *http.Response, path string, out any) error {
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Message != "" {
			return errors.New(e.Message)
		}
		return fmt.Errorf("%s: daemon answered %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode answer to %s: %w", path, err)
	}
	return nil
}

// ImportPolicy sends a rule file (a JSON array of Cilium rules).
func (c *Client) ImportPolicy(ctx context.Context, rules []byte) (PolicyRevision, error) {
	var r PolicyRevision
	return r, c.send(ctx, http.MethodPost, "/v1/policy", bytes.NewReader(rules), &r)
}

// Policy returns the rules in force.
func (c *Client) Policy(ctx context.Context) (Policy, error) {
	var p Policy
	return p, c.send(ctx, http.MethodGet, "/v1/policy", nil, &p)
}

// DeletePolicy removes every rule.
func (c *Client) DeletePolicy(ctx context.Context) (PolicyRevision, error) {
	var r PolicyRevision
	return r, c.send(ctx, http.MethodDelete, "/v1/policy", nil, &r)
}

// Identities lists the identities in use.
func (c *Client) Identities(ctx context.Context) ([]Identity, error) {
	var ids []Identity
	return ids, c.send(ctx, http.MethodGet, "/v1/identities", nil, &ids)
}

// BPFPolicy dumps an endpoint's policy map.
func (c *Client) BPFPolicy(ctx context.Context, id uint16) (BPFPolicy, error) {
	var p BPFPolicy
	return p, c.send(ctx, http.MethodGet, fmt.Sprintf("/v1/bpf/policy/%d", id), nil, &p)
}

// IPCache dumps the ipcache.
func (c *Client) IPCache(ctx context.Context) ([]IPCacheEntry, error) {
	var e []IPCacheEntry
	return e, c.send(ctx, http.MethodGet, "/v1/bpf/ipcache", nil, &e)
}

// Monitor streams events until ctx ends; eventType "" means all, "drop"
// only drops.
func (c *Client) Monitor(ctx context.Context, eventType string, fn func(MonitorEvent)) error {
	path := "/v1/monitor"
	if eventType != "" {
		path += "?type=" + url.QueryEscape(eventType)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://ebpfnet"+path, nil)
	if err != nil {
		return fmt.Errorf("build request %s: %w", path, err)
	}
	// The stream has no end: no client timeout, only ctx.
	stream := &http.Client{Transport: c.http.Transport}
	resp, err := stream.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("reach the ebpfnet daemon at %s (is `ebpfnet daemon` running?): %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeAnswer(resp, path, nil)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev MonitorEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read monitor stream: %w", err)
		}
		fn(ev)
	}
}

// Conntrack dumps the live flows of the conntrack table.
func (c *Client) Conntrack(ctx context.Context) ([]ConntrackEntry, error) {
	var e []ConntrackEntry
	return e, c.send(ctx, http.MethodGet, "/v1/bpf/ct", nil, &e)
}

// Nodes lists the cluster's nodes.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	var n []Node
	return n, c.send(ctx, http.MethodGet, "/v1/nodes", nil, &n)
}

// RemoveNode removes a dead node from the cluster, its blocks freed.
func (c *Client) RemoveNode(ctx context.Context, name string) error {
	var out struct{}
	return c.send(ctx, http.MethodDelete, "/v1/nodes/"+url.PathEscape(name), nil, &out)
}
