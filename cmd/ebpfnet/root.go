package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/api"
)

// cliOptions are the flags every client command shares.
type cliOptions struct {
	socket string
	output string
}

func (o *cliOptions) client() *api.Client { return api.NewClient(o.socket) }

// print writes v as JSON with -o json, else calls table.
func (o *cliOptions) print(w io.Writer, v any, table func(io.Writer) error) error {
	switch o.output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "", "table":
		return table(w)
	default:
		return fmt.Errorf("unknown output format %q: use json or table", o.output)
	}
}

func newRootCommand() *cobra.Command {
	opts := &cliOptions{}
	root := &cobra.Command{
		Use:           "ebpfnet",
		Short:         "Cilium's per-container eBPF datapath for plain Docker",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&opts.socket, "api-socket", api.DefaultSocket, "local API socket of the daemon")
	root.PersistentFlags().StringVarP(&opts.output, "output", "o", "table", "output format: table or json")
	root.AddCommand(
		newDaemonCommand(),
		newStatusCommand(opts),
		newEndpointCommand(opts),
		newPolicyCommand(opts),
		newIdentityCommand(opts),
		newBPFCommand(opts),
		newMonitorCommand(opts),
		newNodeCommand(opts),
	)
	return root
}
