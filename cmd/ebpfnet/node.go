package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newNodeCommand(opts *cliOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "The nodes of the cluster (daemon with --etcd-endpoints)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List every node: name, IP, address blocks, last heartbeat, state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nodes, err := opts.client().Nodes(cmd.Context())
			if err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), nodes, func(out io.Writer) error {
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAME\tNODE IP\tBLOCKS\tLAST HEARTBEAT\tSTATE")
				for _, n := range nodes {
					hb := "-"
					if !n.Heartbeat.IsZero() {
						hb = n.Heartbeat.Local().Format(time.RFC3339)
					}
					blocks := strings.Join(n.Blocks, ", ")
					if blocks == "" {
						blocks = "-"
					}
					ip := n.IP
					if ip == "" {
						ip = "-"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", n.Name, ip, blocks, hb, n.State)
				}
				return w.Flush()
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "remove <name>",
		Short: "Remove a dead node: its address blocks go back to the cluster",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.client().RemoveNode(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Node %s removed\n", args[0])
			return nil
		},
	})
	return cmd
}
