package main

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/api"
)

func newEndpointCommand(opts *cliOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "endpoint", Short: "Inspect the endpoints on this node"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List endpoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps, err := opts.client().Endpoints(cmd.Context())
			if err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), eps, func(w io.Writer) error { return endpointTable(w, eps) })
		},
	}, &cobra.Command{
		Use:   "get <epid>",
		Short: "Show one endpoint",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseEndpointID(args[0])
			if err != nil {
				return err
			}
			ep, err := opts.client().Endpoint(cmd.Context(), id)
			if err != nil {
				return err
			}
			return opts.print(cmd.OutOrStdout(), ep, func(w io.Writer) error { return endpointDetail(w, ep) })
		},
	})
	return cmd
}

func endpointTable(out io.Writer, eps []api.Endpoint) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	// The IPv6 column only when an endpoint has IPv6: an IPv4-only node's
	// table is what it was.
	v6 := false
	for _, ep := range eps {
		v6 = v6 || ep.IPv6 != ""
	}
	head := "ENDPOINT\tPOLICY (ingress)\tPOLICY (egress)\tIDENTITY\tLABELS\tIPv4\t"
	if v6 {
		head += "IPv6\t"
	}
	fmt.Fprintln(w, head+"INTERFACE\tSTATUS")
	for _, ep := range eps {
		addrs := orDash(ep.IPv4) + "\t"
		if v6 {
			addrs += orDash(ep.IPv6) + "\t"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%s\t%s%s\t%s\n", ep.ID, ep.PolicyIngress, ep.PolicyEgress,
			ep.Identity, labelsString(ep.Labels), addrs, ep.IfName, ep.State)
	}
	return w.Flush()
}

// orDash is s, or "-" for an address the endpoint does not have.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func endpointDetail(out io.Writer, ep api.Endpoint) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	rows := [][2]string{
		{"Endpoint ID", strconv.Itoa(int(ep.ID))},
		{"Container", strings.TrimSpace(ep.ContainerName + " " + ep.ContainerID)},
		{"Docker network", ep.DockerNetworkID},
		{"Docker endpoint", ep.DockerEndpointID},
		{"Interface", fmt.Sprintf("%s (ifindex %d)", ep.IfName, ep.IfIndex)},
		{"IPv4", orDash(ep.IPv4)},
		{"IPv6", orDash(ep.IPv6)},
		{"Container MAC", ep.LXCMAC},
		{"Node MAC", ep.NodeMAC},
		{"Identity", strconv.Itoa(int(ep.Identity))},
		{"Labels", labelsString(ep.Labels)},
		{"Policy map", fmt.Sprintf("%s (%d entries)", ep.PolicyMap, ep.PolicyEntries)},
		{"Policy ingress", ep.PolicyIngress},
		{"Policy egress", ep.PolicyEgress},
		{"State", ep.State},
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%s:\t%s\n", r[0], r[1])
	}
	return w.Flush()
}

func labelsString(labels map[string]string) string {
	if len(labels) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(labels))
	for k, v := range labels {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func parseEndpointID(s string) (uint16, error) {
	id, err := strconv.ParseUint(s, 10, 16)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("endpoint ID %q: want a number from 1 to 65535", s)
	}
	return uint16(id), nil
}
