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
  python3-venv                  # componentize-py (Python guest plugins)
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
  # componentize-js needs node and npm; a node from elsewhere (nodesource bundles npm and
  # conflicts with Debian's npm package) is kept as it is.
  if ! command -v npm >/dev/null; then
    log "apt-get install nodejs npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
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

# Guest toolchains for plugins in C, Python and JavaScript (`palisade plugin build`, the
# polyglot plugins in plugins/polyglot/). Cached under $PALISADE_TOOLCHAINS so a rerun (or a CI
# machine that kept its cache) does nothing; each tool is reinstalled only when missing or at
# another version than the one pinned here (the versions that match wasmtime 48).
WASM_TOOLS_VERSION=1.263.0
WIT_BINDGEN_VERSION=0.63.0
ADAPTER_VERSION=48.0.8
COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0
TOOLCHAINS=${PALISADE_TOOLCHAINS:-${XDG_CACHE_HOME:-$HOME/.cache}/palisade/toolchains}
mkdir -p "$TOOLCHAINS"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! wasm-tools --version 2>/dev/null | grep -q "^wasm-tools $WASM_TOOLS_VERSION"; then
  log "cargo install wasm-tools $WASM_TOOLS_VERSION (C plugins: component new)"
  cargo install --locked "wasm-tools@$WASM_TOOLS_VERSION" --no-default-features \
    --features component,validate,print
fi
if ! wit-bindgen --version 2>/dev/null | grep -q "^wit-bindgen-cli $WIT_BINDGEN_VERSION"; then
  log "cargo install wit-bindgen-cli $WIT_BINDGEN_VERSION (C plugins: bindings)"
  cargo install --locked "wit-bindgen-cli@$WIT_BINDGEN_VERSION" --no-default-features --features c
fi
# The preview1 adapter (only needed by C plugins that call stdio or other WASI functions) ships
# inside a crate; a throwaway manifest lets cargo fetch it into its registry cache.
adapter="$TOOLCHAINS/wasi_snapshot_preview1.reactor.wasm"
if [ ! -s "$adapter" ]; then
  log "fetching the preview1 adapter (wasi-preview1-component-adapter-provider $ADAPTER_VERSION)"
  fetch_dir="$TOOLCHAINS/adapter-fetch"
  mkdir -p "$fetch_dir/src"
  printf '[package]\nname = "adapter-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nwasi-preview1-component-adapter-provider = "=%s"\n[workspace]\n' \
    "$ADAPTER_VERSION" >"$fetch_dir/Cargo.toml"
  : >"$fetch_dir/src/lib.rs"
  cargo fetch --manifest-path "$fetch_dir/Cargo.toml" -q
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasi-preview1-component-adapter-provider-"$ADAPTER_VERSION" | head -n1)
  cp "$src/artefacts/wasi_snapshot_preview1.reactor.wasm" "$adapter"
fi

if ! "$TOOLCHAINS/py/bin/componentize-py" --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
  log "componentize-py $COMPONENTIZE_PY_VERSION into $TOOLCHAINS/py (Python plugins)"
  python3 -m venv "$TOOLCHAINS/py"
  "$TOOLCHAINS/py/bin/pip" install -q "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

js_bin="$TOOLCHAINS/js/node_modules/.bin/componentize-js"
if ! grep -qs "\"version\": \"$COMPONENTIZE_JS_VERSION\"" \
    "$TOOLCHAINS/js/node_modules/@bytecodealliance/componentize-js/package.json" || [ ! -x "$js_bin" ]; then
  log "componentize-js $COMPONENTIZE_JS_VERSION into $TOOLCHAINS/js (JavaScript plugins)"
  mkdir -p "$TOOLCHAINS/js"
  [ -f "$TOOLCHAINS/js/package.json" ] || printf '{"name":"palisade-js-toolchain","private":true}\n' >"$TOOLCHAINS/js/package.json"
  (cd "$TOOLCHAINS/js" && npm install --no-audit --no-fund --silent \
    "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION")
fi

# A clean build plus the test run needs disk (measured in docs/performance.md, "Build footprint");
# running out midway fails unrelated tests with ENOSPC, so say so up front.
need_gib=10
free_gib=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
if [ "$free_gib" -lt "$need_gib" ]; then
  log "WARNING: only ${free_gib} GiB free on $(df -P . | awk 'NR==2 {print $6}'); a clean build and test run needs about ${need_gib} GiB"
fi

log "toolchains ready"
