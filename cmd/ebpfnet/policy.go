package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

func newPolicyCommand(opts *cliOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Manage the L3/L4 policy (Cilium's rule format)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "import <file|->",
		Short: "Add rules from a JSON file (a rule with the same labels is replaced)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var data []byte
			var err error
			if args[0] == "-" {
				data, err = io.ReadAll(cmd.InOrStdin())
			} else {
				data, err = os.ReadFile(args[0])
			}
			if err != nil {
				return fmt.Errorf("read rules: %w", err)
			}
			rev, err := opts.client().ImportPolicy(cmd.Context(), data)
			if err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), rev, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Revision: %d\n", rev.Revision)
				return err
			})
		},
	}, &cobra.Command{
		Use:   "get",
		Short: "Print the rules in force",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := opts.client().Policy(cmd.Context())
			if err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), p, func(w io.Writer) error {
				var pretty bytes.Buffer
				if err := json.Indent(&pretty, p.Rules, "", "  "); err != nil {
					pretty.Reset()
					pretty.Write(p.Rules)
				}
				_, err := fmt.Fprintf(w, "%s\nRevision: %d\n", pretty.String(), p.Revision)
				return err
			})
		},
	})
	var all bool
	del := &cobra.Command{
		Use:   "delete --all",
		Short: "Delete every rule",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !all {
				return errors.New("say --all: deleting single rules is not supported yet")
			}
			rev, err := opts.client().DeletePolicy(cmd.Context())
			if err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), rev, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Revision: %d\n", rev.Revision)
				return err
			})
		},
	}
	del.Flags().BoolVar(&all, "all", false, "delete every rule")
	cmd.AddCommand(del)
	cmd.AddCommand(newPolicyMatrixCommand(opts))
	return cmd
}
