#!/usr/bin/env bash
# All benchmarks, from scratch, in one command (from anywhere):
#
#     bash bench/run.sh                 # setup + peers + ours + steptime + load + report
#     bash bench/run.sh peers report    # only some steps
#     bash bench/run.sh curve report    # the optional EPR rate-error curves (long), then the report
#     DRY_RUN=1 bash bench/run.sh ours  # print the commands of the steps, run nothing
#
# Steps:
#   setup     create/refresh the peers venv (bench/setup_peers.sh); render the OCR lines
#   peers     float / zstd -19 / int8 dynamic / int4 MatMulNBits rows   (peers venv, current ORT)
#   ours      = ours-ptq + ours-epr + ours-wfn, evaluated after decode at load (main venv, ORT 1.19.2)
#   ours-ptq    onnxcomp -p ptq rows                                    (seconds)
#   ours-epr    onnxcomp EPR rows, the EPR_* pipelines below            (each a full training: minutes)
#   ours-wfn    onnxcomp WFN rows, the WFN_* pipelines below            (1-5 minutes each)
#   steptime  EPR training-step cost vs plain training (bench/epr_step_time.py, ~1-2 min)
#   load      decode-at-load test on a synthetic 25M-param model       (main venv)
#   corpus    NOT in the default list (about an hour): the real third-party models of bench/corpus/
#             (setup.sh, peers.py, measure.py, ours.py with ptq / ptq --data / lossless and the
#             size ladder, plot.py) -> bench/out/corpus/ours.md, bench/figures/corpus-size-vs-task.png
#   scale     NOT in the default list (~40 min, ~12 GB of disk): load/Run/decode/compress/decompress at
#             ~25M, ~250M and ~600M parameters with external data (bench/scale.py) -> bench/out/scale/
#   curve     NOT in the default list: EPR rate-error curves (bench/epr_curve.py), one training
#             per lambda per model (CURVE_* below); tables + plots in bench/out/epr-curve-*
#   report    merge bench/out/results/*.json (+ bench/out/epr-curve-*.md) into bench/out/BENCHMARKS.md
# Models: models/lenet-300-100.onnx, models/lenet5-caffe.onnx (MNIST),
# models/lenet-300-100-fashion.onnx (Fashion-MNIST: skipped, with a message, when the Debian
# package dataset-fashion-mnist is not installed), and PP-OCRv6 rec from the rapidocr==3.10.0
# package (copied to bench/out/models/). A missing model or a failing step is reported at the end
# and makes the exit status non-zero; the other steps still run.
set -uo pipefail

# ---- EPR configuration: edit here -------------------------------------------------------------
# EPR rows of the `ours` step, per model (variable EPR_<MODEL NAME, upper case, - as _>): each
# entry is a pipeline, optionally followed by compress flags; run.sh appends `--data <the model's
# data set>`. Several entries give several rows. Examples:
#   "epr"                                                      the preset (factorized, lambda 0.3, 25 epochs)
#   "normalize,epr-reparam{prior=logistic},finetune{lambda=1},pack"
#   "epr --max-error-increase 0.003"                           lambda searched for a val budget
EPR_LENET_300_100=("epr" "normalize,epr-reparam,finetune{lambda=0.5},pack")
EPR_LENET5_CAFFE=("normalize,epr-reparam,finetune{lambda=3},pack" "normalize,epr-reparam,finetune{lambda=6},pack"
                  "normalize,epr-reparam,finetune{lambda=2 loss=distill},pack"
                  "normalize,epr-reparam,finetune{lambda=4 loss=distill},pack"
                  "normalize,epr-reparam{prior=logistic},finetune{lambda=1 loss=distill},pack"
                  "normalize,epr-reparam{prior=logistic},finetune{lambda=2 loss=distill},pack")
EPR_LENET_300_100_FASHION=("epr")
# WFN rows of the `ours` step (step ours-wfn), per model, in the same form (WFN_<MODEL>).
WFN_LENET_300_100=("wfn" "normalize,weight-fix{gamma0=0.045},pack" "wfn --max-error-increase 0.001")
WFN_LENET5_CAFFE=("wfn" "normalize,weight-fix{gamma0=0.045},pack")
WFN_LENET_300_100_FASHION=("wfn" "normalize,weight-fix{order=1 delta=0.0075},pack"
                           "normalize,weight-fix{order=1 delta=0.0075 gamma0=0.015625},pack"
                           "normalize,weight-fix{order=1 delta=0.0075 gamma0=0.015625 loss=distill},pack")
# The optional `curve` step: bench/epr_curve.py per model, one `onnxcomp compress` per lambda of
# normalize,epr-reparam{CURVE_EPR_OPTIONS},finetune{lambda=L epochs=CURVE_EPOCHS CURVE_FINETUNE_OPTIONS},pack
CURVE_MODELS=(lenet-300-100)  # LeNet5-Caffe's points are its EPR rows (a training there takes ~15 min)
CURVE_LAMBDAS="0.1,0.2,0.3,0.5,1,2"
CURVE_EPOCHS=""             # empty: finetune's default (25)
CURVE_EPR_OPTIONS=""        # e.g. "prior=logistic" or "conv_decoder=dct"
CURVE_FINETUNE_OPTIONS=""   # e.g. "lr=0.002"
CURVE_FLAGS=()              # more bench/epr_curve.py flags, e.g. (--keep-done)
declare -A CURVE_REFS=(     # published points for the plot, LABEL:KB:ERROR% (KB = 1000 B)
    [lenet-300-100]="EPR paper (Oktay et al. 2020):8.56:1.9"
    [lenet5-caffe]="EPR paper (Oktay et al. 2020):2.84:1.0"
)
# ------------------------------------------------------------------------------------------------

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
MAIN_PY="$REPO/.venv/bin/python"
PEERS_PY="${PEERS_VENV:-$REPO/bench/.venv-peers}/bin/python"
OUT="$REPO/bench/out"
RESULTS="$OUT/results"
STEPS=("$@")
FULL_RUN=0
if [[ ${#STEPS[@]} -eq 0 ]]; then STEPS=(setup peers ours steptime load report); FULL_RUN=1; fi
FAILED=()
SKIPPED=()

want() { local s; for s in "${STEPS[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }
for s in "${STEPS[@]}"; do
    case "$s" in
        setup|peers|ours|ours-ptq|ours-epr|ours-wfn|steptime|load|scale|corpus|curve|report) ;;
        *) echo "unknown step: $s (steps: setup peers ours ours-ptq ours-epr ours-wfn steptime load scale corpus curve report)" >&2; exit 2 ;;
    esac
done
want ours && STEPS+=(ours-ptq ours-epr ours-wfn)
DRY_RUN="${DRY_RUN:-0}"
step() {  # step NAME CMD...: run, log, remember a failure
    local name="$1"; shift
    if [[ "$DRY_RUN" == 1 ]]; then printf '=== [%s]' "$name"; printf ' %q' "$@"; echo; return 0; fi
    echo "=== [$name] $*"
    "$@" || { echo "=== [$name] FAILED (exit $?)"; FAILED+=("$name"); }
}

if [[ ! -x "$MAIN_PY" ]]; then
    echo "main venv missing: $MAIN_PY (create it with the project's setup: onnxruntime-training-cpu" \
         "1.19.2, onnx 1.16, pip install -e .)" >&2
    exit 2
fi
if [[ $FULL_RUN -eq 1 && "$DRY_RUN" != 1 ]]; then rm -f "$RESULTS"/*.json; fi  # a full run leaves no stale rows
mkdir -p "$RESULTS" "$OUT/models"

if want setup || [[ ! -x "$PEERS_PY" ]]; then
    step setup-peers bash "$REPO/bench/setup_peers.sh" || true
fi

# The PP-OCRv6 rec model shipped in the rapidocr package of the peers venv.
REC="bench/out/models/PP-OCRv6_rec_small.onnx"  # relative: commands in the report stay short
if [[ ! -f "$REC" && "$DRY_RUN" != 1 ]]; then
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

# The image classifiers and their data set (= bench task = onnxcomp --data spec).
CLASSIFIERS=(lenet-300-100 lenet5-caffe lenet-300-100-fashion)
declare -A DATA=([lenet-300-100]=mnist [lenet5-caffe]=mnist [lenet-300-100-fashion]=fashion-mnist)
declare -A USABLE=()
FASHION_OK=1
FASHION_WHY="$("$MAIN_PY" bench/mnist_task.py --check fashion-mnist 2>&1 >/dev/null)" || FASHION_OK=0
for m in "${CLASSIFIERS[@]}"; do
    want peers || want ours-ptq || want ours-epr || want ours-wfn || want steptime || want curve || break
    if [[ ! -f "models/$m.onnx" ]]; then
        echo "=== [$m] models/$m.onnx missing: skipped"; FAILED+=("missing-$m")
    elif [[ "${DATA[$m]}" == fashion-mnist && $FASHION_OK -eq 0 ]]; then
        echo "=== [$m] skipped: no Fashion-MNIST data: $FASHION_WHY"
        SKIPPED+=("$m (no dataset-fashion-mnist)")
    else
        USABLE[$m]=1
    fi
done
variants_of() {  # variants_of EPR|WFN MODEL: the <KIND>_<MODEL> array of the configuration above
    local var="${1}_${2^^}"; var="${var//-/_}"
    if ! declare -p "$var" >/dev/null 2>&1; then echo "=== no $var in bench/run.sh: no $1 rows for $2" >&2; return; fi
    local -n arr="$var"
    printf '%s\n' "${arr[@]}"
}

if want peers; then
    for m in "${CLASSIFIERS[@]}"; do
        [[ -n "${USABLE[$m]:-}" ]] && step "peers-$m" "$PEERS_PY" bench/peers.py --model "models/$m.onnx" --task "${DATA[$m]}"
    done
    step peers-pp-ocrv6-rec "$PEERS_PY" bench/peers.py --model "$REC" --task ocr --name pp-ocrv6-rec
fi
if want ours-ptq; then
    for m in "${CLASSIFIERS[@]}"; do
        [[ -n "${USABLE[$m]:-}" ]] || continue
        d="${DATA[$m]}"
        variants=(-p ptq -p "ptq --data $d --max-error-increase 0.001")
        [[ "$d" == mnist ]] && variants+=(-p "ptq --data $d --max-error-increase 0.0005")
        step "ours-$m" "$MAIN_PY" bench/ours.py --model "models/$m.onnx" --task "$d" "${variants[@]}"
    done
    step ours-pp-ocrv6-rec "$MAIN_PY" bench/ours.py --model "$REC" --task ocr --name pp-ocrv6-rec \
        -p ptq -p "ptq --data bench/out/ocr_calibration.npz --max-error-increase 0.05"
fi
for kind in epr wfn; do
    want "ours-$kind" || continue
    # Own results file per model and method, so other rows survive a failed or interrupted training.
    for m in "${CLASSIFIERS[@]}"; do
        [[ -n "${USABLE[$m]:-}" ]] || continue
        variants=()
        while IFS= read -r v; do [[ -n "$v" ]] && variants+=(-p "$v --data ${DATA[$m]}"); done < <(variants_of "${kind^^}" "$m")
        [[ ${#variants[@]} -gt 0 ]] || continue
        step "ours-$kind-$m" "$MAIN_PY" bench/ours.py --model "models/$m.onnx" --task "${DATA[$m]}" \
            --out "bench/out/results/ours-$kind-$m.json" "${variants[@]}"
    done
done
if want steptime; then
    models=()
    for m in "${CLASSIFIERS[@]}"; do [[ -n "${USABLE[$m]:-}" ]] && models+=(--model "models/$m.onnx"); done
    [[ ${#models[@]} -gt 0 ]] && step epr-step-time "$MAIN_PY" bench/epr_step_time.py "${models[@]}"
fi
if want load; then
    step decode-at-load "$MAIN_PY" bench/decode_at_load.py
fi
if want scale; then
    step scale "$MAIN_PY" bench/scale.py
fi
if want corpus; then
    step corpus-setup bash bench/corpus/setup.sh
    [[ -x "$PEERS_PY" ]] || step setup-peers bash "$REPO/bench/setup_peers.sh"
    step corpus-peers "$PEERS_PY" bench/corpus/peers.py
    step corpus-measure "$MAIN_PY" bench/corpus/measure.py
    step corpus-ours "$MAIN_PY" bench/corpus/ours.py --pipelines ptq calib lossless
    step corpus-ladder "$MAIN_PY" bench/corpus/ours.py --pipelines peak8 ptq-small peak6 peak5 ptq-tiny \
        --json bench/out/corpus/ours-ladder.json
    step corpus-plot "$MAIN_PY" bench/corpus/plot.py
fi
if want curve; then
    for m in "${CURVE_MODELS[@]}"; do
        [[ -n "${USABLE[$m]:-}" ]] || { echo "=== [curve-$m] model or data missing: skipped"; continue; }
        args=(--model "models/$m.onnx" --data "${DATA[$m]}" --lambdas "$CURVE_LAMBDAS"
              --epr-options "$CURVE_EPR_OPTIONS" --finetune-options "$CURVE_FINETUNE_OPTIONS")
        [[ -n "$CURVE_EPOCHS" ]] && args+=(--epochs "$CURVE_EPOCHS")
        [[ -n "${CURVE_REFS[$m]:-}" ]] && args+=(--ref "${CURVE_REFS[$m]}")
        step "curve-$m" "$MAIN_PY" bench/epr_curve.py "${args[@]}" "${CURVE_FLAGS[@]}"
    done
fi
if want report; then
    step report python3 bench/report.py --command "bash bench/run.sh${*:+ $*}" >/dev/null
    echo "=== report: $OUT/BENCHMARKS.md"
fi

if [[ ${#SKIPPED[@]} -gt 0 ]]; then
    echo "=== SKIPPED: ${SKIPPED[*]}" >&2
fi
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "=== FAILED steps: ${FAILED[*]}" >&2
    exit 1
fi
echo "=== all steps passed"
