package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
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
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "ID\tLABELS")
				for _, id := range ids {
					fmt.Fprintf(w, "%d\t%s\n", id.ID, strings.Join(id.Labels, " "))
				}
				return w.Flush()
			})
		},
	})
	return cmd
}
