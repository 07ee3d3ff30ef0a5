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

func newIdentityCommand(opts *cliOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "identity", Short: "Inspect security identities"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List identities and their labels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ids, err := opts.client().Identities(cmd.Context())
			if err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), ids, func(out io.Writer) error {
				return identityTable(out, ids, time.Now())
			})
		},
	})
	return cmd
}

// identityTable prints identities, with how long a label identity no
// container holds has been unused: it is freed once that reaches the
// daemon's --identity-grace.
func identityTable(out io.Writer, ids []api.Identity, now time.Time) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tLABELS\tUNUSED FOR")
	for _, id := range ids {
		unused := ""
		if id.UnusedSince != nil {
			unused = max(now.Sub(*id.UnusedSince), 0).Round(time.Second).String()
		}
		fmt.Fprintf(w, "%d\t%s\t%s\n", id.ID, strings.Join(id.Labels, " "), unused)
	}
	return w.Flush()
}
