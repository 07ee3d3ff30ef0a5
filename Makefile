# Developer entry points. scripts/ holds the same steps for a new machine
# (they install what is missing first); CI runs scripts/test.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BIN       := bin/ebpfnet
# Packages whose tests need neither root nor a kernel: run with -race.
PURE_PKGS := ./atomicfile/ ./identity/ ./labels/ ./policy/ ./ipam/ ./driver/ ./external/ ./api/ ./dockerwatch/ ./metrics/ ./cmd/...
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: all build bpf bpf-check lint test test-unit test-privileged e2e bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ebpfnet

# Regenerate the committed BPF object from its C source (clang-19).
bpf:
	./bpf/build.sh bpf/bpf_lxc.o

# Fail when the committed object no longer matches its C source.
bpf-check:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	./bpf/build.sh $$tmp/bpf_lxc.o && \
	cmp -s $$tmp/bpf_lxc.o bpf/bpf_lxc.o || { echo "bpf/bpf_lxc.o is stale: run 'make bpf' and commit it"; exit 1; }
	@echo "bpf/bpf_lxc.o matches bpf/bpf_lxc.c"

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out"; exit 1; }
	$(GO) vet ./...
	$(STATICCHECK) ./...

test-unit:
	$(GO) test -race -count=1 $(PURE_PKGS)

# Real programs on real veths in network namespaces: needs root.
test-privileged:
	$(GO) test -count=1 -p 1 ./bpf/ ./datapath/ ./plugin/

# A real dockerd driven through the docker CLI: needs root and dockerd.
e2e: build
	$(GO) test -count=1 -p 1 -timeout 15m ./test/e2e/ -ebpfnet-binary=$(CURDIR)/$(BIN)

test: lint bpf-check test-unit test-privileged e2e

bench: build
	./bench/run

clean:
	rm -rf bin
