package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/api"
)

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
