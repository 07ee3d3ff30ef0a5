package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/api"
)

// newBPFCTCommand is `ebpfnet bpf ct list`: the datapath's conntrack table.
func newBPFCTCommand(opts *cliOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "ct", Short: "The connection tracking table"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the live flows: the end that opened each first, its state and when it expires",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			flows, err := opts.client().Conntrack(cmd.Context())
			if err != nil {
				return err
			}
			if flows == nil {
				flows = []api.ConntrackEntry{}
			}
			return opts.print(cmd.OutOrStdout(), flows, func(w io.Writer) error { return conntrackTable(w, flows) })
		},
	})
	return cmd
}

func conntrackTable(out io.Writer, flows []api.ConntrackEntry) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PROTO\tSOURCE\tDESTINATION\tSTATE\tEXPIRES\tENDPOINTS")
	for _, f := range flows {
		state := f.State
		if state == "" {
			state = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s -> %s\n", f.Protocol, f.Source, f.Destination, state,
			time.Duration(f.ExpiresInSeconds)*time.Second, endpointOrDash(f.SourceEndpoint), endpointOrDash(f.DestinationEndpoint))
	}
	return w.Flush()
}

// endpointOrDash names a local endpoint by its epid, or "-" for an end
// that is none.
func endpointOrDash(epid uint16) string {
	if epid == 0 {
		return "-"
	}
	return fmt.Sprint(epid)
}
