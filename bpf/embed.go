// Package bpf holds the C sources of the datapath and the object compiled
// from them at build time (see build.sh). The object is committed so that
// the daemon needs no compiler: each endpoint gets a copy of LXCTemplate
// with its constants patched in.
package bpf

import _ "embed"

// LXCTemplate is bpf_lxc.o as compiled by build.sh: the per-endpoint
// program pair with every constant of lib/config.h still zero. Treat it as
// read-only; copy before patching.
//
//go:embed bpf_lxc.o
var LXCTemplate []byte
