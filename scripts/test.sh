#!/usr/bin/env bash
# The whole test suite, as README's Quick start gives it and as .ci/run calls it.
# It installs what the tests need first; today that is only the Rust toolchain's own cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is missing; install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi

# The end-to-end tests run the test upstream (crates/revisor-testapp) as real replicas.
cargo build --locked -p revisor-testapp
cargo test --workspace --all-targets --locked "$@"
