# The managed plugin's image: the static ebpfnet binary and nothing else.
# `make plugin` stages bin/plugin-rootfs (the binary, and iptables links to
# it that run the host's own iptables, see hostexec/) and turns this image
# into the plugin's rootfs. FROM scratch: it builds without any registry.
FROM scratch
COPY bin/plugin-rootfs/ /
ENTRYPOINT ["/ebpfnet", "daemon"]
