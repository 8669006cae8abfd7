#!/usr/bin/env bash
# vrouter developer entry point. Usage:
#   scripts/dev.sh demo    install what is missing, build vrouter and vrouterctl, run the
#                          namespace lab demo (root)
#   scripts/dev.sh test    install what is missing, check formatting and lints, run the whole
#                          test suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the build and the tests need (Debian names): xsk-rs builds libxdp with
# clang/llvm/libelf/zlib/libpcap/pkg-config/m4, and libbpf-sys runs make; the namespace lab and
# its tests use iproute2, sysctl (procps), iperf3, ping, tcpdump (an independent decoder of what
# crosses the wire), curl (the metrics endpoint) and python3; the perf lab uses trafgen
# (netsniff-ng); the BGP test runs BIRD (bird2), as Calico does. The cluster needs etcd
# (etcd-server, and etcdctl from etcd-client for operators), protoc to build the etcd client
# (protobuf-compiler), and the CNI tests run podman (with runc, Debian's reference CNI plugins
# and busybox-static for a registry-free image). A minimal Debian lacks make, procps and curl.
PACKAGES=(clang llvm libelf-dev zlib1g-dev libpcap-dev pkg-config m4 make procps iproute2 iperf3 iputils-ping tcpdump curl python3 ethtool netsniff-ng bird2 protobuf-compiler etcd-server etcd-client podman runc containernetworking-plugins busybox-static)

install_missing() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    if ! command -v cargo >/dev/null; then
        echo "cargo not found: install Rust (rustup) first" >&2
        exit 1
    fi
}

# rustfmt and clippy come with rustup's default profile; a minimal profile lacks them.
install_lint_tools() {
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || { echo "cargo fmt/clippy missing and no rustup to add them" >&2; exit 1; }
        rustup component add rustfmt clippy
    fi
}

case "${1:-}" in
    demo)
        install_missing
        cargo build --release -p vrouter -p vrouterctl -p vrouter-agent -p vrouter-cni
        ./target/release/vrouter lab demo
        ;;
    test)
        install_missing
        install_lint_tools
        cargo fmt --all --check
        cargo clippy --workspace --all-targets -- -D warnings
        # The cluster tests run every binary (vrouterctl, vrouter-agent, vrouter-cni beside
        # vrouter); a package without integration tests of its own would not get its binary
        # built by `cargo test`.
        cargo build --workspace --bins
        cargo test --workspace
        # Each criterion benchmark once, as a smoke test (figures come from `cargo bench`).
        cargo test --workspace --benches
        ;;
    *)
        echo "usage: $0 demo|test" >&2
        exit 2
        ;;
esac
