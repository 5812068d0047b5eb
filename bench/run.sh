#!/usr/bin/env bash
# All benchmarks, from scratch, in one command (from anywhere):
#
#     bash bench/run.sh                 # setup + peers + ours + load + report
#     bash bench/run.sh peers report    # only some steps
#
# Steps:
#   setup   create/refresh the peers venv (bench/setup_peers.sh); render the OCR lines
#   peers   float / zstd -19 / int8 dynamic / int4 MatMulNBits rows   (peers venv, current ORT)
#   ours    onnxcomp -p ptq rows, evaluated after decode at load       (main venv, ORT 1.19.2)
#   load    decode-at-load test on a synthetic 25M-param model         (main venv)
#   report  merge bench/out/results/*.json into bench/out/BENCHMARKS.md
# Models: models/lenet-300-100.onnx, models/lenet5-caffe.onnx (MNIST), and PP-OCRv6 rec from
# the rapidocr==3.10.0 package (copied to bench/out/models/). A missing model or a failing step
# is reported at the end and makes the exit status non-zero; the other steps still run.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
MAIN_PY="$REPO/.venv/bin/python"
PEERS_PY="${PEERS_VENV:-$REPO/bench/.venv-peers}/bin/python"
OUT="$REPO/bench/out"
RESULTS="$OUT/results"
STEPS=("$@")
[[ ${#STEPS[@]} -eq 0 ]] && STEPS=(setup peers ours load report)
FAILED=()

want() { local s; for s in "${STEPS[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }
step() {  # step NAME CMD...: run, log, remember a failure
    local name="$1"; shift
    echo "=== [$name] $*"
    "$@" || { echo "=== [$name] FAILED (exit $?)"; FAILED+=("$name"); }
}

if [[ ! -x "$MAIN_PY" ]]; then
    echo "main venv missing: $MAIN_PY (create it with the project's setup: onnxruntime-training-cpu" \
         "1.19.2, onnx 1.16, pip install -e .)" >&2
    exit 2
fi
if [[ ${#STEPS[@]} -eq 5 ]]; then rm -f "$RESULTS"/*.json; fi  # a full run leaves no stale rows
mkdir -p "$RESULTS" "$OUT/models"

if want setup || [[ ! -x "$PEERS_PY" ]]; then
    step setup-peers bash "$REPO/bench/setup_peers.sh" || true
fi

# The PP-OCRv6 rec model shipped in the rapidocr package of the peers venv.
REC="bench/out/models/PP-OCRv6_rec_small.onnx"  # relative: commands in the report stay short
if [[ ! -f "$REC" ]]; then
    SRC="$("$PEERS_PY" -c 'import rapidocr, os; print(os.path.join(os.path.dirname(rapidocr.__file__), "models", "PP-OCRv6_rec_small.onnx"))')"
    cp "$SRC" "$REC" || FAILED+=("copy-ocr-model")
fi
if want setup; then
    # Pixels rendered once (Pillow lives in the peers venv) and a check that bench/ocr.py's
    # re-implemented pre/post-processing reads what rapidocr's own pipeline reads.
    step ocr-check "$PEERS_PY" bench/ocr.py --model "$REC" --check-rapidocr --out "$OUT/ocr-float-check.json"
    # 64 other rendered lines, unlabeled: calibration data for onnxcomp's --data (never scored).
    step ocr-calibration "$PEERS_PY" bench/ocr.py --model "$REC" --calibration 64
fi

MNIST_MODELS=(lenet-300-100 lenet5-caffe)
for m in "${MNIST_MODELS[@]}"; do
    if [[ ! -f "models/$m.onnx" ]] && { want peers || want ours; }; then
        echo "=== [$m] models/$m.onnx missing: skipped"; FAILED+=("missing-$m")
    fi
done

if want peers; then
    for m in "${MNIST_MODELS[@]}"; do
        [[ -f "models/$m.onnx" ]] && step "peers-$m" "$PEERS_PY" bench/peers.py --model "models/$m.onnx" --task mnist
    done
    step peers-pp-ocrv6-rec "$PEERS_PY" bench/peers.py --model "$REC" --task ocr --name pp-ocrv6-rec
fi
if want ours; then
    for m in "${MNIST_MODELS[@]}"; do
        [[ -f "models/$m.onnx" ]] && step "ours-$m" "$MAIN_PY" bench/ours.py --model "models/$m.onnx" --task mnist \
            -p ptq -p "ptq --data mnist --max-error-increase 0.001" -p "ptq --data mnist --max-error-increase 0.0005"
    done
    step ours-pp-ocrv6-rec "$MAIN_PY" bench/ours.py --model "$REC" --task ocr --name pp-ocrv6-rec \
        -p ptq -p "ptq --data bench/out/ocr_calibration.npz --max-error-increase 0.05"
fi
if want load; then
    step decode-at-load "$MAIN_PY" bench/decode_at_load.py
fi
if want report; then
    step report python3 bench/report.py --command "bash bench/run.sh${*:+ $*}" >/dev/null
    echo "=== report: $OUT/BENCHMARKS.md"
fi

if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "=== FAILED steps: ${FAILED[*]}" >&2
    exit 1
fi
echo "=== all steps passed"
