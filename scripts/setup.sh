#!/usr/bin/env bash
# Installs everything Palisade needs on a fresh Debian 12 machine, idempotently.
# This is the only place anything gets installed; CI and the README quickstart both call it.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "not root: skipping system packages and mounts (kernel features need root)"
    return 1
  fi
}

BPF_LINKER_VERSION=0.13.0
LLVM_MAJOR=22

apt_packages=(
  "llvm-${LLVM_MAJOR}-dev"      # bpf-linker links against Debian's LLVM 22
  clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc   # C guest plugins
  minisign                      # signed plugin packs
  pkg-config
)

if need_root; then
  missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # Kernel interfaces the eBPF source needs.
  if [ ! -e /sys/kernel/tracing/events ]; then
    log "mounting tracefs"; mount -t tracefs nodev /sys/kernel/tracing || log "WARNING: could not mount tracefs"
  fi
  if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs"; mount -t bpf bpf /sys/fs/bpf || log "WARNING: could not mount bpffs"
  fi
fi

# Rust: stable is the default toolchain; the guest target and nightly's rust-src for eBPF.
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src' \
  || rustup component add rust-src --toolchain nightly

# bpf-linker must use the same LLVM major as the nightly rustc that emits the bitcode.
nightly_llvm=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if [ "$nightly_llvm" != "$LLVM_MAJOR" ]; then
  log "ERROR: nightly rustc uses LLVM $nightly_llvm but bpf-linker is built against LLVM $LLVM_MAJOR."
  log "       Install llvm-${nightly_llvm}-dev and set LLVM_MAJOR=${nightly_llvm} in scripts/setup.sh."
  exit 1
fi
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "cargo install bpf-linker $BPF_LINKER_VERSION (LLVM $LLVM_MAJOR)"
  LLVM_PREFIX=/usr/lib/llvm-${LLVM_MAJOR} cargo install bpf-linker --locked --version "$BPF_LINKER_VERSION" \
    --no-default-features --features "llvm-${LLVM_MAJOR}"
fi

log "toolchains ready"
