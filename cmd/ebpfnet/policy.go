package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/api"
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
	return cmd
}

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
				fmt.Fprintln(w, "PREFIX\tIDENTITY\tLABELS")
				for _, e := range entries {
					fmt.Fprintf(w, "%s\t%d\t%s\n", e.Prefix, e.Identity, strings.Join(e.Labels, " "))
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

func newMonitorCommand(opts *cliOptions) *cobra.Command {
	var eventType string
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Print drops and policy verdicts as they happen",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch eventType {
			case "", "drop", "policy-verdict":
			default:
				return fmt.Errorf("--type %q: want drop or policy-verdict", eventType)
			}
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			if opts.output != "json" {
				fmt.Fprintln(out, "Listening for events... Press Ctrl-C to quit")
			}
			return opts.client().Monitor(cmd.Context(), eventType, func(ev api.MonitorEvent) {
				if opts.output == "json" {
					_ = enc.Encode(ev)
					return
				}
				fmt.Fprintln(out, monitorLine(ev))
			})
		},
	}
	cmd.Flags().StringVar(&eventType, "type", "", "only this event type: drop or policy-verdict")
	return cmd
}

// monitorLine prints an event the way `cilium monitor` does, with labels.
func monitorLine(ev api.MonitorEvent) string {
	what := ev.Type
	if ev.Verdict != "" {
		what += " " + ev.Verdict
	}
	return fmt.Sprintf("%s %s (%s) endpoint %d %s, identity %d [%s] -> %d [%s]: %s -> %s %s",
		ev.Time.Format("15:04:05.000"), what, ev.Reason, ev.Endpoint, ev.Direction,
		ev.SrcIdentity, strings.Join(ev.SrcLabels, " "), ev.DstIdentity, strings.Join(ev.DstLabels, " "),
		ev.Source, ev.Destination, ev.Protocol)
}
