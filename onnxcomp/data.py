"""Data specs: turn a short string (``mnist``, ``fashion-mnist:test``, ``eval.npz``) into arrays
shaped for a model's inputs, for fine-tuning and for measuring a compressed model's error.

Spec grammar: ``<source>[:<split>]`` where ``<source>`` is a named data set of
:data:`onnxcomp.models.datasets.DATASETS` or a path ending in ``.npz``, and ``<split>`` (``train``,
``val`` or ``test``) keeps only that split. Splits the source lacks are ``None``.

``.npz`` layouts (arrays are cast to each input's declared type, float32 when it declares none;
no pixel scaling; integers given for a float input are taken as numbers, non-integer values for
an integer input such as token ids are an error):

* split-prefixed keys: ``train/<input>``, ``train/labels``, ``val/...``, ``test/...``; each split
  present needs one array per model input, ``labels`` is optional;
* plain keys ``<input>`` and optional ``labels``: one evaluation set, returned as both ``val`` and
  ``test`` (``train`` is ``None``): the usual case of "measure my model on this data".

Named data sets have one image array; the model must have exactly one input, and it gets it.
Every array is reshaped to the model input's declared shape: the first dimension is the sample
axis (symbolic or not), the others must be fixed and hold the same number of elements (so MNIST's
(N, 784) feeds both ``[N, 784]`` and ``[N, 1, 28, 28]``). Anything that does not fit raises
DataError naming the spec, array and shapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxcomp.errors import DataError

if TYPE_CHECKING:
    import onnx

SPLITS = ("train", "val", "test")
LABELS = "labels"
Shape = Sequence[int | str | None]


@dataclass(frozen=True)
class Split:
    """Model inputs by graph-input name (the inputs' declared types, same first dimension; a
    0-d array, such as a sample rate, is shared by every sample) and optional int64 labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return next((len(a) for a in self.inputs.values() if np.ndim(a)), 1)

    def take(self, index: slice | np.ndarray) -> Split:
        """The samples at ``index`` (a slice keeps views, an index array copies)."""
        labels = None if self.labels is None else self.labels[index]
        return Split({name: array[index] if np.ndim(array) else array for name, array in self.inputs.items()}, labels)


@dataclass(frozen=True)
class Data:
    spec: str
    train: Split | None
    val: Split | None
    test: Split | None

    def split(self, name: str) -> Split:
        """The split called ``name``, or DataError if this spec has none."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; splits are {list(SPLITS)}")
        found = getattr(self, name)
        if found is None:
            raise DataError(f"data spec {self.spec!r} has no {name} split")
        return found


def model_input_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str | None, ...]]:
    """Declared shapes of the graph inputs that are not initializers (symbolic dims as names)."""
    initializers = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name not in initializers:
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in dims)
    return shapes


def model_input_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    """Numpy types of the graph inputs that are not initializers (float32 where the type is not a
    plain numeric tensor type)."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}
    dtypes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        try:
            dtypes[value.name] = np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
        except (KeyError, TypeError):
            dtypes[value.name] = np.dtype(np.float32)
        if dtypes[value.name].kind not in "fiub":
            dtypes[value.name] = np.dtype(np.float32)
    return dtypes


def load_data(spec: str, input_shapes: Mapping[str, Shape], input_dtypes: Mapping[str, np.dtype] | None = None) -> Data:
    """Resolve ``spec`` (see module docstring) for a model whose data inputs have ``input_shapes``
    (and ``input_dtypes``: arrays are cast to them; float32 for inputs not named)."""
    from onnxcomp.models.datasets import DATASETS

    dtypes = {name: np.dtype(input_dtypes.get(name, np.float32)) if input_dtypes else np.dtype(np.float32)
              for name in input_shapes}

    if not input_shapes:
        raise DataError(f"data spec {spec!r}: the model declares no data inputs")
    source, wanted = spec, None
    head, _, tail = spec.rpartition(":")
    if head and tail in SPLITS:
        source, wanted = head, tail
    wanted_splits = SPLITS if wanted is None else (wanted,)
    if source in DATASETS:
        splits = _from_named(spec, DATASETS[source](), input_shapes, dtypes, wanted_splits)
    elif source.endswith(".npz"):
        splits = _from_npz(spec, Path(source), input_shapes, dtypes, wanted_splits)
    else:
        raise DataError(
            f"unknown data spec {spec!r}: use one of {sorted(DATASETS)} or a path to a .npz file, "
            f"optionally followed by :{'/:'.join(SPLITS)}"
        )
    if wanted is not None and splits.get(wanted) is None:
        raise DataError(f"data spec {spec!r}: {source} has no {wanted} split")
    return Data(spec, splits.get("train"), splits.get("val"), splits.get("test"))


def _from_named(spec: str, raw, input_shapes: Mapping[str, Shape], dtypes: Mapping[str, np.dtype],
                wanted: Sequence[str]) -> dict[str, Split]:
    if len(input_shapes) != 1:
        raise DataError(f"data spec {spec!r} provides one image array; the model has inputs {list(input_shapes)}")
    name = next(iter(input_shapes))
    return {
        split: _make_split(spec, f"{split} images", {name: part.images}, part.labels, input_shapes, dtypes)
        for split in wanted
        if (part := getattr(raw, split)) is not None
    }


def _from_npz(spec: str, path: Path, input_shapes: Mapping[str, Shape], dtypes: Mapping[str, np.dtype],
              wanted: Sequence[str]) -> dict[str, Split]:
    if not path.is_file():
        raise DataError(f"data spec {spec!r}: file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise DataError(f"data spec {spec!r}: cannot read {path} as .npz: {error}") from error
    prefixed = {key for key in arrays if "/" in key}
    if not prefixed:
        split = _split_from(spec, "", arrays, input_shapes, dtypes)
        return {name: split for name in ("val", "test") if name in wanted}
    if prefixed != set(arrays):
        raise DataError(f"data spec {spec!r}: mixes split-prefixed and plain keys: {sorted(set(arrays) - prefixed)}")
    bad = sorted({key.split("/", 1)[0] for key in prefixed} - set(SPLITS))
    if bad:
        raise DataError(f"data spec {spec!r}: unknown split prefix {bad}; use {list(SPLITS)}")
    return {
        split: _split_from(spec, f"{split}/", arrays, input_shapes, dtypes)
        for split in wanted
        if any(key.startswith(f"{split}/") for key in arrays)
    }


def _split_from(spec: str, prefix: str, arrays: Mapping[str, np.ndarray], input_shapes: Mapping[str, Shape],
                dtypes: Mapping[str, np.dtype]) -> Split:
    missing = [prefix + name for name in input_shapes if prefix + name not in arrays]
    if missing:
        raise DataError(f"data spec {spec!r}: no array {missing} for model inputs {list(input_shapes)}; "
                        f"the file has {sorted(arrays)} (keys: <input name>, or train/<input name> and "
                        f"val/<input name> for training, plus optional labels)")
    inputs = {name: arrays[prefix + name] for name in input_shapes}
    return _make_split(spec, prefix.rstrip("/") or "arrays", inputs, arrays.get(prefix + LABELS), input_shapes, dtypes)


def _make_split(
    spec: str, where: str, inputs: dict[str, np.ndarray], labels: np.ndarray | None, input_shapes: Mapping[str, Shape],
    dtypes: Mapping[str, np.dtype],
) -> Split:
    fitted = {name: _fit(f"{spec!r} ({where})", name, array, input_shapes[name], dtypes[name])
              for name, array in inputs.items()}
    sizes = {name: len(array) for name, array in fitted.items() if array.ndim}  # 0-d: shared by all
    if len(set(sizes.values())) > 1:
        raise DataError(f"data spec {spec!r} ({where}): inputs differ in sample count {sizes}")
    n = next(iter(sizes.values()), 1)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.shape != (n,):
            raise DataError(
                f"data spec {spec!r} ({where}): labels must be integers of shape ({n},), "
                f"got {labels.dtype} {labels.shape}"
            )
        labels = labels.astype(np.int64, copy=False)
    return Split(fitted, labels)


def _fit(origin: str, name: str, array: np.ndarray, shape: Shape, dtype: np.dtype) -> np.ndarray:
    """``array`` as ``dtype`` with the model's per-sample shape ``shape[1:]``; origin names the data."""
    array = _cast(origin, name, np.asarray(array), dtype)
    sample = tuple(shape)[1:]
    if not shape:  # a 0-d input (a sample rate, a flag): one value shared by every sample
        if array.ndim == 1 and array.size and (array == array[0]).all():
            return np.asarray(array[0])  # stored once per sample, all alike
        if array.ndim != 0:
            raise DataError(f"data spec {origin}: model input {name!r} is a scalar, shared by every sample; array "
                            f"{name!r} of shape {array.shape} holds {len(np.unique(array))} different values")
        return array
    if array.ndim == len(shape) + 1 and array.shape[1] == 1 and array.ndim >= 2:
        array = array[:, 0]  # each sample stored as a whole batch-1 input: [N, 1, ...] is N samples
    if array.ndim == 0 or array.dtype.kind not in "fiub":
        raise DataError(f"data spec {origin}: array {name!r} ({array.dtype}, {array.shape}) is not numeric samples")
    if not all(isinstance(d, int) and d > 0 for d in sample):
        # Dynamic dims (e.g. an OCR model's image width): the array must already have the
        # model's rank and agree on every fixed dim; nothing is reshaped.
        fits = array.ndim == len(shape) and all(
            not (isinstance(d, int) and d > 0) or d == a for d, a in zip(sample, array.shape[1:]))
        if not fits:
            raise DataError(
                f"data spec {origin}: array {name!r} of shape {array.shape} does not fit model input "
                f"shape {list(shape)} (dynamic dims are taken as they are, fixed ones must match)")
        return np.ascontiguousarray(array)
    if math.prod(array.shape[1:]) != math.prod(sample):
        raise DataError(
            f"data spec {origin}: array {name!r} of shape {array.shape} cannot be reshaped "
            f"to model input shape {list(shape)}"
        )
    return np.ascontiguousarray(array.reshape(len(array), *sample))


def _cast(origin: str, name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``array`` in the input's declared type; integer inputs (token ids, byte values) refuse
    fractional or out-of-range values rather than truncating them."""
    if array.dtype == dtype or array.dtype.kind not in "fiub":
        return array  # a non-numeric array is _fit's error to report
    if dtype.kind in "iu" and array.size:
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise DataError(f"data spec {origin}: array {name!r} holds fractional values; model input {name!r} is {dtype}")
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise DataError(f"data spec {origin}: array {name!r} has values outside {dtype} "
                            f"[{array.min()}, {array.max()}] for model input {name!r}")
    return array.astype(dtype)


def batches(split: Split, batch_size: int, shuffle_seed: int | None = None) -> Iterator[Split]:
    """Consecutive batches of ``split`` (the last one may be smaller).

    With ``shuffle_seed`` the samples are permuted by ``numpy.random.default_rng(shuffle_seed)``,
    so an epoch's order depends only on the seed.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    n = len(split)
    order = None if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield split.take(slice(start, stop) if order is None else order[start:stop])


HELD_OUT_EVERY = 5  # a one-split spec trained on: every 5th sample validates, the rest train


def split_for_training(data: Data) -> Data:
    """``data`` with a train split for training passes: a spec with only one split (a flat .npz)
    is split deterministically, every HELD_OUT_EVERY-th sample (the 5th, 10th, ...) held out as
    val and the rest train, interleaved so that data stored in order (by class, by file) splits
    alike. Specs that have a train split are returned as they are."""
    if data.train is not None or data.val is None:
        return data
    n = len(data.val)
    if n < 2:
        raise DataError(f"data spec {data.spec!r}: {n} sample(s); training needs at least 2 (train and val)")
    index = np.arange(n)
    held_out = (index % HELD_OUT_EVERY) == HELD_OUT_EVERY - 1
    if not held_out.any():
        held_out[-1] = True
    return Data(data.spec, data.val.take(index[~held_out]), data.val.take(index[held_out]), data.test)
