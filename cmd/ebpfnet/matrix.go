package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/servicemap"
)

// newPolicyMatrixCommand is `ebpfnet policy matrix`: which identity may
// open flows to which, on which ports, from the live policy maps; the
// service map's matrix, for a terminal.
func newPolicyMatrixCommand(opts *cliOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "matrix",
		Short: "Print who may talk to whom: identity x identity, with the ports, from the policy maps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var m servicemap.Matrix
			if err := opts.client().Get(cmd.Context(), "/v1/policy/matrix", &m); err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), m, func(w io.Writer) error { return matrixTable(w, m) })
		},
	}
}

// matrixTable prints the identities, then the matrix with a row per
// sender and a column per receiver, headed by identity numbers.
func matrixTable(out io.Writer, m servicemap.Matrix) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "IDENTITY\tNAME\tENDPOINTS\tNODES\tPOLICY (ingress)\tPOLICY (egress)")
	for _, id := range m.Identities {
		fmt.Fprintf(w, "%d\t%s\t%d\t%s\t%s\t%s\n", id.ID, id.Name, id.Endpoints,
			orDash(strings.Join(id.Nodes, ",")), orDash(id.Ingress), orDash(id.Egress))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	cells := map[[2]uint32]servicemap.Cell{}
	for _, c := range m.Cells {
		cells[[2]uint32{c.From, c.To}] = c
	}
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprint(w, "FROM \\ TO")
	for _, to := range m.Identities {
		fmt.Fprintf(w, "\t%d", to.ID)
	}
	fmt.Fprintln(w)
	for _, from := range m.Identities {
		fmt.Fprintf(w, "%d %s", from.ID, from.Name)
		for _, to := range m.Identities {
			fmt.Fprintf(w, "\t%s", cellText(cells, from.ID, to.ID))
		}
		fmt.Fprintln(w)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(out, "\nany: every port and protocol; -: denied; *: one end's endpoints are all on other nodes, which enforce its side; .: decided on other nodes only")
	return err
}

func cellText(cells map[[2]uint32]servicemap.Cell, from, to uint32) string {
	c, ok := cells[[2]uint32{from, to}]
	if !ok {
		return "."
	}
	s := strings.Join(c.Ports, ",")
	if s == "" {
		s = "-"
	}
	if c.Partial {
		s += "*"
	}
	return s
}
