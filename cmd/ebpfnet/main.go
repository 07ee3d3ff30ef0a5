// Command ebpfnet is the daemon (`ebpfnet daemon`) and the CLI that talks to
// it over the local API.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ebpfnet/ebpfnet/hostexec"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// In the managed plugin, iptables is a link to this binary: run the
	// host's own (see package hostexec).
	if hostexec.Handles(os.Args[0]) {
		err := hostexec.Run(os.Args)
		fmt.Fprintln(os.Stderr, "ebpfnet:", err)
		os.Exit(127)
	}
	// Ctrl-C ends `ebpfnet monitor` and SIGTERM stops the daemon, both
	// through the command's context.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
