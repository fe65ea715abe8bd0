#!/usr/bin/env bash
# The whole test suite: guest plugins built from source, the workspace tests (unit, golden,
# sandbox, hot reload, replay), the guests' native unit tests, and lints. Kernel tests run when
# root (CI is root) and say loudly when they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo xtask build-plugins
cargo test --no-fail-fast
cargo xtask test-plugins
cargo fmt --all -- --check
# Daemon and library code is held to -D warnings; tests may unwrap.
cargo clippy -p palisade-host -p palisade-sdk -p palisade-xtask -p palisade-common --lib --bins -- -D warnings
