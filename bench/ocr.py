"""OCR accuracy check for compressed text-recognition models: "identical OCR text on rendered lines".

A fixed list of text lines (words, numbers, mixed case, punctuation) is rendered with Pillow and
DejaVuSans into 48-pixel-high grayscale crops, cached in bench/out/ocr_lines.npz so that a venv
without Pillow (the main one) reads the same pixels. Each crop is recognized by the GIVEN rec
model with PP-OCR's own recognition pre/post-processing, re-implemented here in numpy (the
same steps as rapidocr 3.10's TextRecognizer: height 48, width = 48 * max(320/48, w/h), scale to
[-1, 1], zero-pad right; greedy CTC, blank = 0, dictionary = the `character` metadata entry of
the model plus a trailing space). One line per batch, so padding never depends on other lines.

Reported: the fraction of lines whose text is identical to the reference (float) model's text,
and identical to the rendered ground truth; also the fraction of CTC frames whose argmax equals
the reference's (more sensitive than whole lines: it moves before any text changes). `--check-rapidocr` (peers venv) also runs rapidocr's
own pipeline with the model plugged in as Rec.model_path and checks that it reads the same text
as this re-implementation.

    python bench/ocr.py --model REC.onnx [--reference FLOAT_REC.onnx] [--check-rapidocr] [--out r.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnx

from sessions import open_session

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "out", "ocr_lines.npz")
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
HEIGHT = 48

# Deterministic text lines: English words, numbers, mixed case, punctuation, codes.
LINES = [
    "Hello World", "The quick brown fox jumps", "over the lazy dog", "ONNX Runtime 1.19",
    "Invoice No. 20481", "Total: $1,234.56", "Date 2024-03-17", "Call +1 555 0199",
    "MixedCase TeXt LiNe", "model compression", "Entropy Coding", "weights 25M params",
    "error rate 0.96%", "Order #A7-3310", "Room 404 Floor 12", "batch size 128",
    "Learning rate 2e-5", "x = 3.14159", "Version 3.10.0", "temperature 21.5 C",
    "Page 17 of 230", "abcdefghijklm", "NOPQRSTUVWXYZ", "0123456789",
    "Zurich Station", "open 9:00-17:30", "ID: QX-88213-B", "user@example.org",
    "Speed limit 80 km/h", "Final Report (draft)",
]
# Per-line rendering style, a fixed cycle: (font size, gray level of the text).
STYLES = [(32, 0), (28, 40), (36, 0), (30, 80), (34, 20)]


def render_lines(lines: list[str]) -> list[np.ndarray]:
    """Draw each line on white and scale it to HEIGHT rows; returns uint8 (H, W, 3) arrays."""
    from PIL import Image, ImageDraw, ImageFont

    if not os.path.exists(FONT):
        raise SystemExit(f"{FONT} missing: apt-get install -y fonts-dejavu-core")
    images = []
    for i, text in enumerate(lines):
        size, gray = STYLES[i % len(STYLES)]
        font = ImageFont.truetype(FONT, size)
        left, top, right, bottom = font.getbbox(text)
        pad = size // 3
        img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 255)
        ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=gray, font=font)
        w = max(1, round(img.width * HEIGHT / img.height))
        img = img.resize((w, HEIGHT), Image.Resampling.LANCZOS)
        images.append(np.repeat(np.asarray(img, np.uint8)[:, :, None], 3, axis=2))
    return images


def _lines_key(lines: list[str]) -> str:
    return hashlib.sha256(json.dumps([lines, STYLES, HEIGHT]).encode()).hexdigest()[:16]


def load_lines(lines: list[str] = LINES) -> list[np.ndarray]:
    """Rendered crops from the cache, rendering (needs Pillow) when it is missing or stale."""
    key = _lines_key(lines)
    if os.path.exists(CACHE):
        z = np.load(CACHE)
        if str(z["key"]) == key:
            return [z[f"img_{i:03d}"] for i in range(len(lines))]
    try:
        images = render_lines(lines)
    except ImportError as e:
        raise SystemExit(f"{CACHE} missing or stale and Pillow is not installed here ({e}): "
                         "run bench/ocr.py once in the peers venv to render it") from e
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    tmp = CACHE + ".tmp.npz"
    np.savez_compressed(tmp, key=np.array(key), **{f"img_{i:03d}": im for i, im in enumerate(images)})
    os.replace(tmp, CACHE)
    return images


CALIBRATION = os.path.join(HERE, "out", "ocr_calibration.npz")
CALIBRATION_WIDTH = 320
_VOCAB = ("invoice total amount paid due date name street city zip phone email order item qty "
          "price tax net gross page report summary notes Berlin Paris Oslo Tokyo Lima Cairo "
          "ACME Corp Ltd GmbH Inc No ID Ref Tel Fax www com org net").split()


def calibration_texts(n: int, seed: int = 7) -> list[str]:
    """Deterministic lines unlike the evaluation LINES: words, numbers, codes (for --data)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        parts = []
        for _ in range(int(rng.integers(1, 4))):
            kind = rng.integers(0, 4)
            if kind == 0:
                parts.append(str(rng.choice(_VOCAB)).capitalize() if rng.random() < 0.5 else str(rng.choice(_VOCAB)))
            elif kind == 1:
                parts.append(str(int(rng.integers(0, 100000))))
            elif kind == 2:
                parts.append(f"{rng.integers(0, 1000)}.{rng.integers(0, 100):02d}")
            else:
                parts.append(f"{chr(65 + rng.integers(0, 26))}{chr(65 + rng.integers(0, 26))}-{rng.integers(10, 999)}")
        text = " ".join(parts)
        if text not in LINES and len(text) <= 18:
            out.append(text)
    return out


def write_calibration(model: str, n: int) -> str:
    """Render n calibration lines as one model-input batch [n, 3, 48, 320] into an .npz keyed by
    the model's input name: onnxcomp's --data for the OCR model (no labels)."""
    images = render_lines(calibration_texts(n))
    batch = np.zeros((n, 3, HEIGHT, CALIBRATION_WIDTH), np.float32)
    for i, im in enumerate(images):
        x = preprocess(im)[0]
        w = min(CALIBRATION_WIDTH, x.shape[2])
        batch[i, :, :, :w] = x[:, :, :w]
    name = onnx.load(model, load_external_data=False).graph.input[0].name
    os.makedirs(os.path.dirname(CALIBRATION), exist_ok=True)
    np.savez_compressed(CALIBRATION, **{name: batch})
    return CALIBRATION


def character_list(path: str) -> list[str] | None:
    """PP-OCR's CTC alphabet: 'blank' + the model's `character` metadata lines + ' '."""
    model = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        return None
    return ["blank"] + meta["character"].splitlines() + [" "]


def preprocess(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    assert h == HEIGHT, "crops are rendered at the model height"
    width = int(HEIGHT * max(320 / HEIGHT, w / h))
    x = np.zeros((1, 3, HEIGHT, width), np.float32)
    x[0, :, :, :w] = (img.astype(np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return x


def ctc_greedy(probs: np.ndarray, chars: list[str]) -> tuple[str, float]:
    idx, conf = probs.argmax(-1), probs.max(-1)
    keep = np.ones(len(idx), bool)
    keep[1:] = idx[1:] != idx[:-1]
    keep &= idx != 0
    text = "".join(chars[i] for i in idx[keep])
    return text, float(conf[keep].mean()) if keep.any() else 0.0


def recognize(sess, images: list[np.ndarray], chars: list[str]) -> list[dict]:
    """Per line: text, mean confidence, and the per-frame argmax (for frame agreement)."""
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    rows = []
    for im in images:
        probs = sess.run([out], {name: preprocess(im)})[0][0]
        text, conf = ctc_greedy(probs, chars)
        rows.append({"text": text, "confidence": conf, "frames": probs.argmax(-1)})
    return rows


def rapidocr_texts(model_path: str, images: list[np.ndarray]) -> list[str]:
    """rapidocr's own rec pipeline with this model (det and cls off); peers venv only."""
    from rapidocr import RapidOCR

    engine = RapidOCR(params={"Rec.model_path": model_path, "Global.log_level": "error"})
    texts = []
    for im in images:
        r = engine(im, use_det=False, use_cls=False, use_rec=True)
        texts.append("".join(r.txts) if r.txts else "")
    return texts


def evaluate(model: str, reference: str | None = None, check_rapidocr: bool = False,
             reference_rows: list[dict] | None = None) -> dict:
    """Recognize LINES with `model`; compare with ground truth and the reference model's output.

    `reference_rows` (the "rows" of an earlier result) spares re-running the reference model.
    """
    images = load_lines()
    chars, dict_source = character_list(model), "model metadata"
    if chars is None and reference:
        chars, dict_source = character_list(reference), "reference metadata (model lost it)"
    if chars is None:
        raise SystemExit(f"{model}: no `character` metadata entry and no --reference to take it from")
    sess, loader = open_session(model)
    rows = recognize(sess, images, chars)
    texts = [r["text"] for r in rows]
    if reference_rows is None and reference:
        reference_rows = recognize(open_session(reference)[0], images, character_list(reference))
    result = {
        "lines": len(LINES),
        "identical_to_truth": sum(a == b for a, b in zip(texts, LINES)) / len(LINES),
        "identical_to_reference": None,
        "frame_agreement": None,
        "mean_confidence": float(np.mean([r["confidence"] for r in rows])),
        "dictionary": dict_source,
        "loader": loader,
        "texts": texts,
        "mismatches_vs_truth": [[want, have] for want, have in zip(LINES, texts) if want != have],
        "rows": rows,
    }
    if reference_rows is not None:
        ref_texts = [r["text"] for r in reference_rows]
        same = sum(int((a["frames"] == b["frames"]).sum()) for a, b in zip(rows, reference_rows))
        frames = sum(len(r["frames"]) for r in rows)
        result["identical_to_reference"] = sum(a == b for a, b in zip(texts, ref_texts)) / len(LINES)
        result["frame_agreement"] = same / frames
        result["mismatches_vs_reference"] = [[a, b] for a, b in zip(ref_texts, texts) if a != b]
    if check_rapidocr:
        rapid = rapidocr_texts(model, images)
        result["rapidocr_agrees"] = sum(a == b for a, b in zip(rapid, texts)) / len(LINES)
        result["rapidocr_disagreements"] = [[a, b] for a, b in zip(texts, rapid) if a != b]
    return result


def public(result: dict) -> dict:
    """The JSON-able part of a result (drops the per-frame arrays)."""
    return {k: v for k, v in result.items() if k != "rows"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="rec .onnx to check (plain, ORT-quantized or onnxcomp)")
    ap.add_argument("--reference", help="float rec .onnx whose text counts as the reference")
    ap.add_argument("--check-rapidocr", action="store_true",
                    help="also run rapidocr's pipeline with the model and compare (needs rapidocr)")
    ap.add_argument("--render-only", action="store_true", help="write the line cache and stop")
    ap.add_argument("--calibration", type=int, metavar="N",
                    help="write N rendered calibration lines (not the evaluation lines) as an .npz for --data, and stop")
    ap.add_argument("--out", help="write the JSON result here")
    args = ap.parse_args(argv)
    if args.calibration:
        print(write_calibration(args.model, args.calibration))
        return 0
    if args.render_only:
        load_lines()
        print(CACHE)
        return 0
    result = evaluate(args.model, args.reference, args.check_rapidocr)
    text = json.dumps(public(result), indent=1, ensure_ascii=False)
    if args.out:  # full result to the file, a summary to the terminal
        with open(args.out, "w") as f:
            f.write(text)
        text = json.dumps({k: v for k, v in public(result).items() if k != "texts"}, ensure_ascii=False)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
