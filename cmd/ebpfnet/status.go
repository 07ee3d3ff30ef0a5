package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/api"
)

func newStatusCommand(opts *cliOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := opts.client().Status(cmd.Context())
			if err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), s, func(w io.Writer) error { return statusTable(w, s) })
		},
	}
}

func statusTable(out io.Writer, s api.Status) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Version:\t%s\n", s.Version)
	fmt.Fprintf(w, "Uptime:\t%s\n", s.Uptime)
	fmt.Fprintf(w, "Datapath:\t%s\n", s.Datapath)
	fmt.Fprintf(w, "Endpoints:\t%d (%d restored at start)\n", s.Endpoints, s.Restored)
	fmt.Fprintf(w, "Networks:\t%d\n", len(s.Networks))
	for _, n := range s.Networks {
		id := n.ID
		if len(id) > 12 {
			id = id[:12]
		}
		fmt.Fprintf(w, "  %s\tsubnet %s gateway %s\n", id, n.Subnet, n.Gateway)
	}
	if c := s.Cluster; c != nil {
		state := "connected"
		if !c.Connected {
			state = "DISCONNECTED (" + c.LastError + ")"
		}
		fmt.Fprintf(w, "Cluster:\tnode %s (%s), etcd %s\n", c.Node, c.NodeIP, strings.Join(c.Etcd, ","))
		fmt.Fprintf(w, "  etcd\t%s since %s, lease %x, %d writes queued\n", state, c.Since.Local().Format(time.RFC3339), c.LeaseID, c.Queued)
		if c.WaitingForIdentity > 0 {
			fmt.Fprintf(w, "  waiting\t%d containers wait for an identity (init until etcd answers)\n", c.WaitingForIdentity)
		}
	}
	fmt.Fprintf(w, "IPAM pools:\t%d\n", len(s.Pools))
	for _, p := range s.Pools {
		fmt.Fprintf(w, "  %s\t%d addresses allocated\n", p.Pool, len(p.Allocated))
	}
	for _, h := range s.Healed {
		fmt.Fprintf(w, "Rebuilt at start:\t%s (%s)\n", h.File, h.Fault)
		if h.MovedTo != "" {
			fmt.Fprintf(w, "  moved aside to\t%s\n", h.MovedTo)
		}
		fmt.Fprintf(w, "  from\t%s\n", h.Rebuilt)
		if h.WaitingForDocker {
			fmt.Fprintf(w, "  \twaiting for Docker\n")
		}
		for _, n := range h.NotRebuilt {
			fmt.Fprintf(w, "  not rebuilt\t%s\n", n)
		}
	}
	for _, p := range s.Problems {
		fmt.Fprintf(w, "PROBLEM:\t%s\n", p)
	}
	return w.Flush()
}
