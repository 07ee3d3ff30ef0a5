#!/bin/sh
# build.sh [SRC [OUT]]: compile SRC (default bpf_lxc.c, the per-endpoint
# template; bpf_node.c is the node programs) into OUT (default: SRC's name
# with .o, next to this script). Runs from the bpf directory with a relative
# compilation dir, so the object does not depend on where the repository is
# checked out.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=${1:-bpf_lxc.c}
out=${2:-$here/${src%.c}.o}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
CLANG=${CLANG:-clang-19}
STRIP=${STRIP:-llvm-strip-19}
cd "$here"
tmp=$out.tmp.$$
trap 'rm -f "$tmp"' EXIT
"$CLANG" -O2 -g -target bpf -mcpu=v3 -I/usr/include/x86_64-linux-gnu \
	-Wall -Werror -fdebug-compilation-dir=. -c "$src" -o "$tmp"
# Drop DWARF, keep .BTF/.BTF.ext (cilium/ebpf needs them for maps and
# globals).
"$STRIP" --strip-debug "$tmp"
mv "$tmp" "$out"
