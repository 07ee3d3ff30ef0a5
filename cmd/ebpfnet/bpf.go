package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newBPFCommand(opts *cliOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "bpf", Short: "Look into the datapath's maps"}
	pol := &cobra.Command{Use: "policy", Short: "Per-endpoint policy maps"}
	pol.AddCommand(&cobra.Command{
		Use:   "get <epid>",
		Short: "Dump an endpoint's policy map, identities resolved to labels",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseEndpointID(args[0])
			if err != nil {
				return err
			}
			p, err := opts.client().BPFPolicy(cmd.Context(), id)
			if err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), p, func(out io.Writer) error {
				fmt.Fprintf(out, "Endpoint %d, map %s, ingress %s, egress %s\n", p.Endpoint, p.PolicyMap, p.PolicyIngress, p.PolicyEgress)
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "DIRECTION\tIDENTITY\tLABELS\tPORT/PROTO")
				for _, e := range p.Entries {
					fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", e.Direction, e.Identity, strings.Join(e.Labels, " "), portProto(e.Port, e.Protocol))
				}
				return w.Flush()
			})
		},
	})
	ipc := &cobra.Command{Use: "ipcache", Short: "The IP/prefix to identity map"}
	ipc.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the ipcache",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			entries, err := opts.client().IPCache(cmd.Context())
			if err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), entries, func(out io.Writer) error {
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "PREFIX\tIDENTITY\tLABELS\tSOURCE\tNODE")
				for _, e := range entries {
					node := e.Node
					if e.TunnelEndpoint != "" {
						node = strings.TrimSpace(node + " " + e.TunnelEndpoint)
					}
					fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\n", e.Prefix, e.Identity, strings.Join(e.Labels, " "), e.Source, node)
				}
				return w.Flush()
			})
		},
	})
	cmd.AddCommand(pol, ipc, newBPFCTCommand(opts))
	return cmd
}

func portProto(port uint16, proto string) string {
	p := "ANY"
	if port != 0 {
		p = fmt.Sprint(port)
	}
	return p + "/" + proto
}
