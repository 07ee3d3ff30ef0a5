// Package bpf holds the C sources of the datapath and the objects compiled
// from them at build time (see build.sh). The objects are committed so that
// the daemon needs no compiler: each endpoint gets a copy of LXCTemplate
// with its constants patched in, and NodeObject is loaded once per daemon
// start.
package bpf

import _ "embed"

// LXCTemplate is bpf_lxc.o as compiled by build.sh: an endpoint's entry
// programs and policy lookup with every constant of lib/config.h still
// zero. Treat it as read-only; copy before patching.
//
//go:embed bpf_lxc.o
var LXCTemplate []byte

// NodeObject is bpf_node.o as compiled by build.sh: the programs every
// endpoint's entry programs tail-call into (lib/cb.h). Read-only.
//
//go:embed bpf_node.o
var NodeObject []byte
