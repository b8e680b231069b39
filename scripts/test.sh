#!/usr/bin/env bash
# The whole test suite, as README's Quick start gives it and as .ci/run calls it.
# It installs what the tests need first:
# - onnxruntime and numpy in a venv (.venv-test), the reference the model server is compared with,
#   and PyPI's kubernetes client, which a test drives against the admin API;
# - magika 1.0.3's wheel from PyPI, from which the pretrained model the tests serve is extracted;
# - Debian's prometheus, which a rollout test starts on loopback as a metric provider;
# - kubectl, a Kubernetes client the kubectl test drives (Debian's kubernetes-client when none is on
#   the PATH; the machine image has kubectl 1.32);
# - Debian's chromium and chromium-driver, the headless browser the dashboard test drives.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is missing; install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "installing python3 with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi

if ! command -v prometheus >/dev/null 2>&1; then
  echo "installing prometheus with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if ! command -v kubectl >/dev/null 2>&1; then
  echo "installing kubectl (kubernetes-client) with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

VENV="$ROOT/.venv-test"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" 2>/dev/null || {
    echo "installing python3-venv with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
fi
"$VENV/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null || "$VENV/bin/pip" install -q onnxruntime numpy
"$VENV/bin/python" -c 'import kubernetes' 2>/dev/null || "$VENV/bin/pip" install -q kubernetes==37.0.2

MAGIKA="$ROOT/target/magika/model.onnx"
if [ ! -f "$MAGIKA" ]; then
  mkdir -p "$ROOT/target/magika/wheel"
  "$VENV/bin/pip" download -q --no-deps magika==1.0.3 -d "$ROOT/target/magika/wheel"
  "$VENV/bin/python" - "$ROOT/target/magika/wheel" "$MAGIKA" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/magika-1.0.3-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("magika/models/standard_v3_3/model.onnx"))
PY
fi
export REVISOR_PYTHON="$VENV/bin/python" REVISOR_MAGIKA_MODEL="$MAGIKA"
# The model server's second engine loads the ONNX Runtime library that the onnxruntime wheel ships.
REVISOR_ONNXRUNTIME_LIB=$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.* 2>/dev/null | head -1)
if [ -z "$REVISOR_ONNXRUNTIME_LIB" ]; then
  echo "scripts/test.sh: the onnxruntime wheel in $VENV has no libonnxruntime.so.1.*" >&2
  exit 1
fi
export REVISOR_ONNXRUNTIME_LIB

# Every server the tests start writes its admin token and CA for the CLI; keep them out of the user's
# ~/.config (and let the tests run where HOME is unset or read-only).
export XDG_CONFIG_HOME="${REVISOR_TEST_CONFIG_HOME:-$PWD/target/test-config}"
mkdir -p "$XDG_CONFIG_HOME"

# The end-to-end tests run the test upstream (crates/revisor-testapp) as real replicas.
cargo build --locked -p revisor-testapp
cargo test --workspace --all-targets --locked "$@"
