"""Task metric of a candidate model (compressed / quantized file) against the corpus original.

Runs in the MAIN venv (onnxruntime-training-cpu 1.19.2 + onnxcomp: `ai.onnxcomp` files open
through onnxcomp.runtime, see bench/sessions.py) and also in the peers venv (plain current
onnxruntime) for files that 1.19.2 cannot run. Needs numpy and onnx only; no Pillow, no model
package. Both models see the same eval.npz samples (one at a time, CPU provider, 1 thread by
default) and every metric is computed from their outputs in numpy:

- detectors (ddddocr-det, nudenet-320n): the package's own decoding + NMS, then candidate boxes
  matched to the original's (same class, IoU >= 0.5): found / lost / extra, mean IoU; the
  original against rendered ground truth where it exists (ddddocr-det).
- ppocrv6-det: DB post-processing (thresh 0.3, dilation, box score >= 0.5, unclip 1.6) -> boxes
  matched at IoU >= 0.5, pixel IoU of the binary maps; original vs rendered line boxes.
- OCR recognizers (ppocrv6-rec, ddddocr-ocr-*): CTC greedy text identical to the original's,
  frame agreement; original vs rendered text.
- text / audio embeddings (minilm-l3*, oww-embedding): cosine of candidate vs original vectors
  (mean, min); MiniLM: nearest-neighbour agreement; openWakeWord: the package's hey_jarvis
  classifier on the candidate's embeddings, clip decision flips at 0.5 and max score change.
- classifiers (smart-turn-v3, magika): decision / top-1 flips, max |probability change|.
- silero-vad: every eval clip streamed with the candidate's OWN state (from zeros), chunk
  decision flips at 0.5, max |probability change|.

    python bench/corpus/task.py --name NAME --candidate PATH [--original PATH] [--out JSON]

`evaluate(name, candidate_path)` returns the same dict. The headline is `metric` (named by
`metric_name`, with `higher_is_better`); `perfect` says whether the candidate reproduces the
original exactly on this metric (it must be true for the original against itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # bench/: sessions

import models as M  # noqa: E402
from sessions import open_session, versions  # noqa: E402


# ----------------------------------------------------------------------------- running

def run_model(path: str, name: str, threads: int = 1) -> tuple[list[list[np.ndarray]], str]:
    """Outputs of every eval sample (a list per sample), and the loader used."""
    meta = M.load_meta(name)
    z = np.load(os.path.join(M.out_dir(name), "eval.npz"))
    sess, loader = open_session(path, threads=threads)
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in z.files]
    if missing:
        raise SystemExit(f"{path}: inputs {missing} not in eval.npz ({z.files})")
    data = {n: z[n] for n in names}
    n = len(next(iter(data.values())))
    if name == "silero-vad":
        return _run_vad(sess, data, name), loader
    outs = []
    for i in range(n):
        feeds = {k: (np.asarray(v[i]) if meta["layout"] == "stacked" else v[i:i + 1]) for k, v in data.items()}
        outs.append(sess.run(None, feeds))
    return outs, loader


def _run_vad(sess, data: dict, name: str) -> list[list[np.ndarray]]:
    """Stream each clip: the candidate's own state, from zeros at the clip start."""
    aux = _aux(name)
    clip = aux["clip"]
    outs, state = [], None
    for i in range(len(clip)):
        if i == 0 or clip[i] != clip[i - 1]:
            state = np.zeros_like(data["state"][i])
        p, state = sess.run(None, {"input": data["input"][i], "state": state, "sr": np.asarray(data["sr"][i])})
        outs.append([p])
    return outs


def _aux(name: str) -> dict:
    p = os.path.join(M.out_dir(name), "eval_aux.npz")
    return dict(np.load(p)) if os.path.exists(p) else {}


# ----------------------------------------------------------------------------- boxes

def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = list(np.argsort(-scores))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        if order:
            ious = iou_matrix(boxes[i:i + 1], boxes[order])[0]
            order = [j for j, v in zip(order, ious) if v <= thr]
    return keep


def match(ref: dict, cand: dict, thr: float = 0.5) -> dict:
    """Greedy one-to-one matching of candidate boxes to reference boxes (same class)."""
    rb, cb = ref["boxes"], cand["boxes"]
    iou = iou_matrix(rb, cb)
    if len(rb) and len(cb):
        iou = iou * (ref["classes"][:, None] == cand["classes"][None, :])
    pairs = []
    used_r, used_c = set(), set()
    for flat in np.argsort(-iou, axis=None):
        r, c = np.unravel_index(flat, iou.shape)
        if iou[r, c] < thr:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((int(r), int(c), float(iou[r, c])))
    ds = [abs(float(ref["scores"][r]) - float(cand["scores"][c])) for r, c, _ in pairs] if "scores" in cand else []
    return {"ref": len(rb), "cand": len(cb), "matched": len(pairs), "ious": [p[2] for p in pairs], "score_diffs": ds}


def detection_summary(ref_dets: list[dict], cand_dets: list[dict], gt: list[np.ndarray] | None = None) -> dict:
    tot = {"ref": 0, "cand": 0, "matched": 0, "ious": [], "score_diffs": []}
    images_identical = 0
    for r, c in zip(ref_dets, cand_dets):
        m = match(r, c)
        for k in ("ref", "cand", "matched"):
            tot[k] += m[k]
        tot["ious"] += m["ious"]
        tot["score_diffs"] += m["score_diffs"]
        images_identical += m["ref"] == m["cand"] == m["matched"]
    out = {
        "original_boxes": tot["ref"], "candidate_boxes": tot["cand"], "matched": tot["matched"],
        "lost": tot["ref"] - tot["matched"], "extra": tot["cand"] - tot["matched"],
        "matched_pct": 100.0 * tot["matched"] / max(1, tot["ref"]),
        "mean_iou_matched": float(np.mean(tot["ious"])) if tot["ious"] else None,
        "min_iou_matched": float(np.min(tot["ious"])) if tot["ious"] else None,
        "max_score_change_matched": float(np.max(tot["score_diffs"])) if tot["score_diffs"] else None,
        "images_with_identical_box_sets": images_identical, "images": len(ref_dets),
    }
    if gt is not None:
        out["original_vs_truth"] = _vs_truth(ref_dets, gt)
        out["candidate_vs_truth"] = _vs_truth(cand_dets, gt)
    return out


def _vs_truth(dets: list[dict], gt: list[np.ndarray]) -> dict:
    tp = n_gt = n_det = 0
    for d, g in zip(dets, gt):
        m = match({"boxes": g, "classes": np.zeros(len(g), int)}, {"boxes": d["boxes"], "classes": np.zeros(len(d["boxes"]), int)})
        tp += m["matched"]
        n_gt += len(g)
        n_det += len(d["boxes"])
    return {"truth_boxes": n_gt, "detected": n_det, "recall_iou50": tp / max(1, n_gt), "precision_iou50": tp / max(1, n_det)}


def _gt_per_image(aux: dict, n: int, key="gt_boxes", owner="gt_image") -> list[np.ndarray]:
    return [aux[key][aux[owner] == i] for i in range(n)]


# -- decoders ---------------------------------------------------------------------------

def decode_yolox_416(out: np.ndarray, score_thr=0.1, nms_thr=0.45) -> dict:
    """ddddocr's demo_postprocess + class-agnostic NMS, in model (416) pixels."""
    p = out[0].astype(np.float64).copy()
    grids, strides = [], []
    for s in (8, 16, 32):
        n = 416 // s
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    g, st = np.concatenate(grids), np.concatenate(strides)
    p[:, :2] = (p[:, :2] + g) * st
    p[:, 2:4] = np.exp(p[:, 2:4]) * st
    scores = p[:, 4] * p[:, 5]
    keep = scores > score_thr
    b = p[keep, :4]
    boxes = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    sc = scores[keep]
    k = nms(boxes, sc, nms_thr) if len(sc) else []
    return {"boxes": boxes[k], "scores": sc[k], "classes": np.zeros(len(k), int)}


def decode_yolov8(out: np.ndarray, score_thr=0.25, nms_thr=0.45) -> dict:
    """nudenet's _postprocess: [1, 4+18, N] -> class-agnostic NMS, in model (320) pixels."""
    p = out[0].T.astype(np.float64)
    cls = p[:, 4:]
    best = cls.max(1)
    keep = best >= score_thr
    b = p[keep, :4]
    boxes = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    sc, cl = best[keep], cls[keep].argmax(1)
    k = nms(boxes, sc, nms_thr) if len(sc) else []
    return {"boxes": boxes[k], "scores": sc[k], "classes": cl[k]}


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels (scipy when present, else a numpy min-propagation)."""
    try:
        from scipy import ndimage

        return ndimage.label(mask, structure=np.ones((3, 3)))
    except ImportError:
        big = mask.size + 1
        lab = np.where(mask, np.arange(mask.size).reshape(mask.shape) + 1, big)
        while True:
            p = np.pad(lab, 1, constant_values=big)
            nb = np.min([p[1 + dy:p.shape[0] - 1 + dy, 1 + dx:p.shape[1] - 1 + dx]
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
            new = np.where(mask, np.minimum(lab, nb), big)
            if np.array_equal(new, lab):
                break
            lab = new
        u, inv = np.unique(np.where(mask, lab, 0), return_inverse=True)
        return inv.reshape(mask.shape), len(u) - (1 if u[0] == 0 else 0)


def decode_db(prob: np.ndarray, thresh=0.3, box_thresh=0.5, unclip=1.6) -> dict:
    """rapidocr's DB post-processing, axis-aligned: binarize, dilate 2x2, components, mean score, unclip."""
    m = prob[0, 0]
    b = m > thresh
    b = b | np.pad(b, ((1, 0), (0, 0)))[:-1] | np.pad(b, ((0, 0), (1, 0)))[:, :-1] | np.pad(b, ((1, 0), (1, 0)))[:-1, :-1]
    lab, n = _label(b)
    boxes, scores = [], []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(lab == k)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        if min(x2 - x1, y2 - y1) < 3:
            continue
        s = float(m[ys, xs].mean())
        if s < box_thresh:
            continue
        w, h = x2 - x1, y2 - y1
        dist = w * h * unclip / (2 * (w + h))
        boxes.append([x1 - dist, y1 - dist, x2 + dist, y2 + dist])
        scores.append(s)
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "scores": np.array(scores), "classes": np.zeros(len(boxes), int),
            "mask": b}


# ----------------------------------------------------------------------------- text

def ctc(frames: np.ndarray, chars: list[str]) -> str:
    keep = np.ones(len(frames), bool)
    keep[1:] = frames[1:] != frames[:-1]
    keep &= frames != 0
    return "".join(chars[i] if i < len(chars) else "?" for i in frames[keep])


def ocr_summary(ref_frames, cand_frames, chars, truth=None, fold_case=False) -> dict:
    rt = [ctc(f, chars) for f in ref_frames]
    ct = [ctc(f, chars) for f in cand_frames]
    norm = (lambda s: s.lower()) if fold_case else (lambda s: s)  # noqa: E731
    same = sum(a == b for a, b in zip(rt, ct))
    fa = sum(int((a == b).sum()) for a, b in zip(ref_frames, cand_frames)) / max(1, sum(len(a) for a in ref_frames))
    out = {"lines": len(rt), "identical_pct": 100.0 * same / max(1, len(rt)), "frame_agreement": fa,
           "mismatches": [[a, b] for a, b in zip(rt, ct) if a != b][:20]}
    if truth is not None:
        truth = [str(t) for t in truth]
        out["original_vs_truth_pct"] = 100.0 * sum(norm(a) == norm(t) for a, t in zip(rt, truth)) / len(truth)
        out["candidate_vs_truth_pct"] = 100.0 * sum(norm(a) == norm(t) for a, t in zip(ct, truth)) / len(truth)
        out["original_errors_vs_truth"] = [[t, a] for a, t in zip(rt, truth) if norm(a) != norm(t)][:20]
    return out


def ppocr_chars(path: str) -> list[str]:
    import onnx

    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    return ["blank"] + meta["character"].splitlines() + [" "]


# ----------------------------------------------------------------------------- vectors

def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def minilm_vectors(outs, lengths) -> np.ndarray:
    v = np.stack([o[0][0, :n].mean(0) for o, n in zip(outs, lengths)]).astype(np.float64)
    return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-9)


def hey_jarvis_scores(name: str, emb: np.ndarray, clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The package's wake-word classifier (original) on 16 consecutive embeddings per position."""
    sess, _ = open_session(os.path.join(M.out_dir(name), "aux_hey_jarvis.onnx"), threads=1)
    iname = sess.get_inputs()[0].name
    pos, clip_max = [], []
    for c in np.unique(clip):
        e = emb[clip == c].reshape(-1, 96).astype(np.float32)
        s = [float(sess.run(None, {iname: e[t - 15:t + 1][None]})[0].ravel()[0]) for t in range(15, len(e))]
        pos += s
        clip_max.append(max(s))
    return np.array(pos), np.array(clip_max)


# ----------------------------------------------------------------------------- metrics

def metric(name: str, ref: list, cand: list, aux: dict, original_path: str) -> dict:
    if name == "ddddocr-det" or name == "nudenet-320n":
        dec = decode_yolox_416 if name == "ddddocr-det" else decode_yolov8
        rd = [dec(o[0]) for o in ref]
        cd = [dec(o[0]) for o in cand]
        gt = _gt_per_image(aux, len(ref)) if "gt_boxes" in aux else None
        r = detection_summary(rd, cd, gt)
        r["perfect"] = r["lost"] == 0 and r["extra"] == 0 and (r["min_iou_matched"] or 1) > 0.999
        return {"metric_name": "boxes matched to original % (IoU>=0.5)", "metric": r["matched_pct"],
                "higher_is_better": True, **r}
    if name == "ppocrv6-det":
        rd = [decode_db(o[0]) for o in ref]
        cd = [decode_db(o[0]) for o in cand]
        r = detection_summary(rd, cd, _gt_per_image(aux, len(ref)))
        inter = sum(int((a["mask"] & b["mask"]).sum()) for a, b in zip(rd, cd))
        union = sum(int((a["mask"] | b["mask"]).sum()) for a, b in zip(rd, cd))
        r["pixel_iou"] = inter / max(1, union)
        r["max_prob_change"] = float(max(np.abs(a[0] - b[0]).max() for a, b in zip(ref, cand)))
        r["perfect"] = r["lost"] == 0 and r["extra"] == 0 and r["pixel_iou"] == 1.0
        return {"metric_name": "text boxes matched to original % (IoU>=0.5)", "metric": r["matched_pct"],
                "higher_is_better": True, **r}
    if name == "ppocrv6-rec" or name.startswith("ddddocr-ocr"):
        if name == "ppocrv6-rec":
            chars = ppocr_chars(original_path)
            rf = [o[0][0].argmax(-1) for o in ref]
            cf = [o[0][0].argmax(-1) for o in cand]
            fold = False
        else:
            chars = json.load(open(os.path.join(M.out_dir(name), "aux_charset.json"), encoding="utf-8"))
            rf = [o[0][:, 0].argmax(-1) for o in ref]
            cf = [o[0][:, 0].argmax(-1) for o in cand]
            fold = True
        r = ocr_summary(rf, cf, chars, aux.get("text"), fold_case=fold)
        r["perfect"] = r["identical_pct"] == 100.0 and r["frame_agreement"] == 1.0
        return {"metric_name": "OCR text identical to original %", "metric": r["identical_pct"],
                "higher_is_better": True, **r}
    if name.startswith("minilm"):
        rv = minilm_vectors(ref, aux["length"])
        cv = minilm_vectors(cand, aux["length"])
        cs = (rv * cv).sum(1)
        sr, sc = rv @ rv.T, cv @ cv.T
        np.fill_diagonal(sr, -9)
        np.fill_diagonal(sc, -9)
        nn = float((sr.argmax(1) == sc.argmax(1)).mean())
        r = {"cosine_mean": float(cs.mean()), "cosine_min": float(cs.min()), "nearest_neighbour_agreement": nn,
             "max_abs_hidden_change": float(max(np.abs(a[0] - b[0]).max() for a, b in zip(ref, cand))),
             "sentences": len(rv)}
        r["perfect"] = r["cosine_min"] > 1 - 1e-6 and nn == 1.0
        return {"metric_name": "sentence-embedding cosine vs original (mean)", "metric": r["cosine_mean"],
                "higher_is_better": True, **r}
    if name == "oww-embedding":
        re_ = np.concatenate([o[0] for o in ref])
        ce = np.concatenate([o[0] for o in cand])
        cs = cosines(re_, ce)
        clip = aux["clip"]
        rp, rmax = hey_jarvis_scores(name, re_, clip)
        cp, cmax = hey_jarvis_scores(name, ce, clip)
        wake = aux["wake"].astype(bool)
        r = {"cosine_mean": float(cs.mean()), "cosine_min": float(cs.min()), "windows": len(cs),
             "clips": len(rmax), "clip_decision_flips": int(((rmax > 0.5) != (cmax > 0.5)).sum()),
             "position_decision_flips": int(((rp > 0.5) != (cp > 0.5)).sum()), "positions": len(rp),
             "max_wake_score_change": float(np.abs(rp - cp).max()),
             "original_clip_accuracy_vs_truth": float(((rmax > 0.5) == wake).mean()),
             "candidate_clip_accuracy_vs_truth": float(((cmax > 0.5) == wake).mean()),
             "wake_clips": int(wake.sum())}
        r["perfect"] = r["cosine_min"] > 1 - 1e-6 and r["clip_decision_flips"] == 0 and r["position_decision_flips"] == 0
        return {"metric_name": "audio-embedding cosine vs original (mean)", "metric": r["cosine_mean"],
                "higher_is_better": True, **r}
    if name == "smart-turn-v3":
        rp = np.array([float(o[0].ravel()[0]) for o in ref])
        cp = np.array([float(o[0].ravel()[0]) for o in cand])
        lab = aux["complete"].astype(bool)
        flips = int(((rp > 0.5) != (cp > 0.5)).sum())
        r = {"samples": len(rp), "decision_flips": flips, "max_prob_change": float(np.abs(rp - cp).max()),
             "mean_prob_change": float(np.abs(rp - cp).mean()),
             "original_accuracy_vs_truth": float(((rp > 0.5) == lab).mean()),
             "candidate_accuracy_vs_truth": float(((cp > 0.5) == lab).mean())}
        r["perfect"] = flips == 0 and r["max_prob_change"] < 1e-6
        return {"metric_name": "end-of-turn decision flips vs original (of eval)", "metric": flips,
                "higher_is_better": False, **r}
    if name == "magika":
        rp = np.concatenate([o[0] for o in ref])
        cp = np.concatenate([o[0] for o in cand])
        rl, cl = rp.argmax(1), cp.argmax(1)
        labels = json.load(open(os.path.join(M.out_dir(name), "aux_labels.json")))
        truth = aux["ext_label"]
        has = truth != ""
        name_of = np.array(labels)
        flips = int((rl != cl).sum())
        r = {"files": len(rl), "top1_flips": flips, "max_prob_change": float(np.abs(rp - cp).max()),
             "top1_score_change_max": float(np.abs(rp[np.arange(len(rl)), rl] - cp[np.arange(len(rl)), rl]).max()),
             "files_with_extension_label": int(has.sum()),
             "original_accuracy_vs_extension": float((name_of[rl][has] == truth[has]).mean()),
             "candidate_accuracy_vs_extension": float((name_of[cl][has] == truth[has]).mean()),
             "flipped": [[str(aux["path"][i]), str(name_of[rl[i]]), str(name_of[cl[i]])] for i in np.nonzero(rl != cl)[0][:20]]}
        r["perfect"] = flips == 0 and r["max_prob_change"] < 1e-6
        return {"metric_name": "file-type top-1 flips vs original (of eval)", "metric": flips,
                "higher_is_better": False, **r}
    if name == "silero-vad":
        rp = np.array([float(o[0].ravel()[0]) for o in ref])
        cp = np.array([float(o[0].ravel()[0]) for o in cand])
        lab = aux["speech"].astype(bool)
        flips = int(((rp > 0.5) != (cp > 0.5)).sum())
        r = {"chunks": len(rp), "clips": int(len(np.unique(aux["clip"]))), "decision_flips": flips,
             "decision_flips_pct": 100.0 * flips / len(rp), "max_prob_change": float(np.abs(rp - cp).max()),
             "mean_prob_change": float(np.abs(rp - cp).mean()),
             "original_accuracy_vs_truth": float(((rp > 0.5) == lab).mean()),
             "candidate_accuracy_vs_truth": float(((cp > 0.5) == lab).mean()),
             "speech_chunks": int(lab.sum())}
        r["perfect"] = flips == 0 and r["max_prob_change"] < 1e-6
        return {"metric_name": "VAD chunk decision flips vs original % (streamed)", "metric": r["decision_flips_pct"],
                "higher_is_better": False, **r}
    raise SystemExit(f"no metric for {name}")


_REFERENCE: dict = {}


def evaluate(name: str, candidate_path: str, original_path: str | None = None, threads: int = 1) -> dict:
    M.entry(name)
    original_path = original_path or M.model_path(name)
    t0 = time.perf_counter()
    key = (name, os.path.abspath(original_path), os.path.getmtime(original_path), threads)
    if key not in _REFERENCE:  # one run of the original per process (ours.py scores many candidates)
        _REFERENCE[key] = run_model(original_path, name, threads)[0]
    ref = _REFERENCE[key]
    t1 = time.perf_counter()
    cand, loader = run_model(candidate_path, name, threads)  # a new session even for the same file
    cand_s = time.perf_counter() - t1
    r = metric(name, ref, cand, _aux(name), original_path)
    r.update({"name": name, "candidate": os.path.relpath(candidate_path, M.REPO),
              "original": os.path.relpath(original_path, M.REPO), "candidate_loader": loader,
              "n_eval": len(ref), "original_seconds": round(t1 - t0, 2), "candidate_seconds": round(cand_s, 2),
              "threads": threads, "venv": versions()})
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, choices=list(M.CORPUS))
    ap.add_argument("--candidate", required=True, help="model file to score (plain, ORT-quantized or onnxcomp)")
    ap.add_argument("--original", help="reference model (default bench/out/corpus/NAME/model.onnx)")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1)")
    ap.add_argument("--out", help="JSON file (default bench/out/corpus/NAME/task-<candidate stem>.json)")
    args = ap.parse_args(argv)
    if not os.path.exists(args.candidate):
        raise SystemExit(f"{args.candidate}: no such file")
    r = evaluate(args.name, args.candidate, args.original, args.threads)
    out = args.out or os.path.join(M.out_dir(args.name),
                                   "task-" + os.path.basename(args.candidate).rsplit(".onnx", 1)[0] + ".json")
    with open(out + ".tmp", "w") as f:
        json.dump(r, f, indent=1, ensure_ascii=False, default=str)
    os.replace(out + ".tmp", out)
    short = {k: v for k, v in r.items() if k not in ("mismatches", "original_errors_vs_truth", "flipped", "venv")}
    print(json.dumps(short, ensure_ascii=False, default=str))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
