# Developer entry points. scripts/ holds the same steps for a new machine
# (they install what is missing first); CI runs scripts/test.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BIN       := bin/ebpfnet
# Packages whose tests need neither root nor a kernel: run with -race.
PURE_PKGS := ./atomicfile/ ./dockerid/ ./endpoint/ ./identity/ ./ipcache/ ./labels/ ./policy/ ./ipam/ ./driver/ ./external/ ./api/ ./dockerwatch/ ./metrics/ ./hostexec/ ./cmd/... ./cluster/ ./servicemap/ ./ui/ ./contrib/grafana/
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: all build bpf bpf-check lint test test-unit fuzz test-privileged e2e e2e-docker29 e2e-node docker29 \
	bench cluster-demo clean plugin-rootfs plugin plugin-push install uninstall

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ebpfnet

# Regenerate the committed BPF objects from their C sources (clang-19).
BPF_SOURCES = bpf_lxc bpf_node
bpf:
	for o in $(BPF_SOURCES); do ./bpf/build.sh $$o.c bpf/$$o.o || exit 1; done

# Fail when a committed object no longer matches its C source.
bpf-check:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	for o in $(BPF_SOURCES); do \
		./bpf/build.sh $$o.c $$tmp/$$o.o && \
		cmp -s $$tmp/$$o.o bpf/$$o.o || { echo "bpf/$$o.o is stale: run 'make bpf' and commit it"; exit 1; }; \
		echo "bpf/$$o.o matches bpf/$$o.c"; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out"; exit 1; }
	$(GO) vet ./...
	$(STATICCHECK) ./...

test-unit:
	$(GO) test -race -count=1 $(PURE_PKGS)

# Real programs on real veths in network namespaces: needs root.
test-privileged:
	$(GO) test -count=1 -p 1 ./bpf/ ./datapath/ ./plugin/ ./procsys/

# A real dockerd driven through the docker CLI: needs root and dockerd.
# What the tests keep (the service map's screenshot) goes to
# bin/e2e-artifacts/_artifacts/<n>/; each test names its files in its log.
E2E_ARTIFACTS := $(CURDIR)/bin/e2e-artifacts
E2E_TEST = $(GO) test -count=1 -p 1 -timeout 15m -artifacts -outputdir $(E2E_ARTIFACTS) ./test/e2e/ -ebpfnet-binary=$(CURDIR)/$(BIN)
e2e: build
	mkdir -p $(E2E_ARTIFACTS)
	$(E2E_TEST)

# Each fuzz target for FUZZTIME on top of its committed seeds (go test
# -fuzz takes one target at a time). What a run finds goes to testdata as
# a regression test.
FUZZTIME ?= 10s
FUZZ_TARGETS := ./labels/:FuzzCanonicalFormNamesOneSet ./labels/:FuzzParseSelectorKey \
	./policy/:FuzzParse ./plugin/:FuzzDockerCalls
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
		log=$$(mktemp); \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg >$$log 2>&1 || \
			{ tail -n 30 $$log; rm -f $$log; \
			  echo "$$name failed; a failing input, if found, is in $${pkg}testdata/fuzz/$$name"; exit 1; }; \
		rm -f $$log; \
	done

# The same suite in a node of its own (scripts/node) with its own dockerd:
# Docker 29, built once into bin/docker29 (scripts/docker29), or another
# engine with E2E_DOCKER=20.10. Nothing of the host's dockerd or ebpfnet
# state is touched. E2E_NODE names the node.
E2E_DOCKER ?= 29
E2E_NODE   ?= e2e-d$(subst .,,$(E2E_DOCKER))
e2e-docker29:
	$(MAKE) e2e-node E2E_DOCKER=29

e2e-node: build $(if $(filter 29,$(E2E_DOCKER)),docker29)
	./scripts/node down $(E2E_NODE)
	./scripts/node up $(E2E_NODE) --docker $(E2E_DOCKER)
	mkdir -p $(E2E_ARTIFACTS)
	@trap './scripts/node down $(E2E_NODE)' EXIT; \
	./scripts/node exec $(E2E_NODE) $(E2E_TEST) || { \
		echo "e2e in node $(E2E_NODE) (Docker $(E2E_DOCKER)) failed; the end of its dockerd log:"; \
		./scripts/node logs $(E2E_NODE) | tail -n 40; exit 1; }

docker29:
	./scripts/docker29

test: lint bpf-check test-unit fuzz test-privileged e2e e2e-docker29

bench: build
	./bench/run

# Three nodes on this machine, the Cilium walk-through across them, then
# everything taken down (scripts/cluster-demo).
cluster-demo:
	./scripts/cluster-demo

# The managed plugin. PLUGIN is the local name; plugin-push publishes the
# same rootfs as $(REGISTRY)/ebpfnet:$(PLUGIN_TAG), the reference users give
# to `docker plugin install`.
PLUGIN     ?= ebpfnet/ebpfnet
PLUGIN_TAG ?= $(VERSION)
PLUGIN_DIR := bin/plugin

# bin/plugin: config.json and the rootfs exported from the Dockerfile's image.
plugin-rootfs: build
	rm -rf bin/plugin-rootfs $(PLUGIN_DIR)
	mkdir -p bin/plugin-rootfs/usr/sbin bin/plugin-rootfs/tmp $(PLUGIN_DIR)/rootfs
	cp $(BIN) bin/plugin-rootfs/ebpfnet
	for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
		ln -s /ebpfnet bin/plugin-rootfs/usr/sbin/$$t; done
	mkdir -p bin/plugin-rootfs/run bin/plugin-rootfs/var && ln -s ../run bin/plugin-rootfs/var/run
	docker build -q -t ebpfnet-plugin-rootfs:$(PLUGIN_TAG) . >/dev/null
	id=$$(docker create ebpfnet-plugin-rootfs:$(PLUGIN_TAG)) && \
		docker export $$id | tar -x -C $(PLUGIN_DIR)/rootfs; rc=$$?; [ -z "$$id" ] || docker rm $$id >/dev/null; \
		docker rmi ebpfnet-plugin-rootfs:$(PLUGIN_TAG) >/dev/null; exit $$rc
	cp config.json $(PLUGIN_DIR)/config.json

# Creates and enables $(PLUGIN):$(PLUGIN_TAG), replacing an older one of
# that name. The host directories the plugin mounts must exist first.
plugin: plugin-rootfs
	mkdir -p /var/lib/ebpfnet /run/ebpfnet /var/run/docker/netns
	mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	-docker plugin rm -f $(PLUGIN):$(PLUGIN_TAG) >/dev/null 2>&1
	docker plugin create $(PLUGIN):$(PLUGIN_TAG) $(PLUGIN_DIR)
	docker plugin enable $(PLUGIN):$(PLUGIN_TAG)

plugin-push: plugin-rootfs
	@[ -n "$(REGISTRY)" ] || { echo "plugin-push: set REGISTRY, e.g. make plugin-push REGISTRY=127.0.0.1:5000"; exit 1; }
	-docker plugin rm -f $(REGISTRY)/ebpfnet:$(PLUGIN_TAG) >/dev/null 2>&1
	docker plugin create $(REGISTRY)/ebpfnet:$(PLUGIN_TAG) $(PLUGIN_DIR)
	docker plugin push $(REGISTRY)/ebpfnet:$(PLUGIN_TAG); rc=$$?; \
		docker plugin rm -f $(REGISTRY)/ebpfnet:$(PLUGIN_TAG) >/dev/null; exit $$rc

# Legacy mode: the binary and the systemd unit. DESTDIR stages elsewhere.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
UNITDIR    ?= /etc/systemd/system

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/ebpfnet
	mkdir -p $(DESTDIR)$(UNITDIR)
	sed 's|@BINDIR@|$(BINDIR)|' contrib/systemd/ebpfnet.service >$(DESTDIR)$(UNITDIR)/ebpfnet.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ebpfnet.service
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; \
		echo "installed: systemctl enable --now ebpfnet, then restart docker"; fi

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable --now ebpfnet 2>/dev/null || true; fi
	rm -f $(DESTDIR)$(BINDIR)/ebpfnet $(DESTDIR)$(UNITDIR)/ebpfnet.service
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf bin
