"""File-level integrity of the ``ai.onnxcomp`` domain (FORMAT.md section 8) and the decode budget.

The CRC-32 of each EntropyDecode node covers only the integers it decodes; everything else a
decode reads (float steps, the weight-fixing codebook, tensors stored raw, shapes, the graph that
wires them) would otherwise be trusted as it stands. Since domain version 3 the file therefore
carries a *seal*: one ``metadata_props`` entry whose key is :data:`SEAL_KEY` and whose value is
the SHA-256 of the file's other top-level fields, byte for byte in file order. onnxcomp appends
it as the last field; loading and re-saving the model with ``onnx`` may move it among the
metadata, which leaves the hash valid. The seal is checked on the raw bytes, before any other
parsing, so a corrupt file is refused before a single size in it is believed.

The seal is integrity against corruption (disks, transfers, careless edits), not authenticity: a
writer who changes the file can recompute it.
"""

from __future__ import annotations

import hashlib
import os

from onnxcomp.errors import FormatError, ModelLoadError

from . import format as fmt
from . import onnx_wire as w

SEAL_KEY = "ai.onnxcomp.sha256"
MODEL_METADATA_PROPS = 14
ENTRY_KEY, ENTRY_VALUE = 1, 2


def seal_entry(body: bytes | memoryview) -> bytes:
    """The ModelProto field that seals ``body``, a serialized model without a seal (append it:
    the hash of the concatenated top-level fields is the hash of ``body``)."""
    digest = hashlib.sha256(body).hexdigest()
    return w.len_field(MODEL_METADATA_PROPS, w.len_field(ENTRY_KEY, SEAL_KEY.encode()) + w.len_field(ENTRY_VALUE, digest.encode()))


def seal(data: bytes) -> bytes:
    """Serialized model bytes with the seal appended (protobuf takes fields in any order)."""
    return data + seal_entry(data)


def _metadata_key_value(f: w.Field) -> tuple[str, str]:
    key = value = ""
    for g in w.parse_fields(f.value):
        if g.number == ENTRY_KEY and g.wire_type == w.LEN:
            key = bytes(g.value).decode("utf-8", errors="replace")
        elif g.number == ENTRY_VALUE and g.wire_type == w.LEN:
            value = bytes(g.value).decode("utf-8", errors="replace")
    return key, value


def domain_version(top: list[w.Field]) -> int | None:
    """The ``ai.onnxcomp`` version the model imports (None: not imported); refuses a version no
    decoder here implements and a domain imported twice."""
    versions = [version for domain, version in w.opset_imports(top) if domain == fmt.DOMAIN]
    if not versions:
        return None
    if len(versions) > 1:
        raise FormatError(f"the model imports the {fmt.DOMAIN} domain {len(versions)} times")
    if versions[0] not in fmt.DOMAIN_VERSIONS:
        raise FormatError(f"the model imports {fmt.DOMAIN} version {versions[0]}; this decoder reads versions "
                          f"{', '.join(map(str, fmt.DOMAIN_VERSIONS))}: upgrade onnxcomp")
    return versions[0]


def check_seal(top: list[w.Field], version: int | None) -> bool:
    """Verify the seal of a model (``top``: its top-level fields). Returns whether the file is
    sealed; raises FormatError when the seal is wrong or doubled, or missing from a file of
    domain version 3 or later."""
    seals = [(i, f) for i, f in enumerate(top) if is_seal(f)]
    if not seals:
        if version is not None and version >= fmt.SEALED_DOMAIN_VERSION:
            raise FormatError(f"the model imports {fmt.DOMAIN} version {version} but has no {SEAL_KEY!r} seal: "
                              f"truncated, or edited by a tool that dropped it")
        return False
    if len(seals) > 1:
        raise FormatError(f"the model has {len(seals)} {SEAL_KEY!r} seals; a file has exactly one")
    index, field = seals[0]
    digest = hashlib.sha256()
    for i, f in enumerate(top):
        if i != index:
            digest.update(f.raw)
    expected, actual = _metadata_key_value(field)[1], digest.hexdigest()
    if actual != expected:
        raise FormatError(f"integrity check failed: the file's SHA-256 is {actual[:16]}..., its seal says "
                          f"{expected[:16] or 'nothing'}...: the file is corrupt or was changed after onnxcomp wrote it")
    return True


def is_seal(f: w.Field) -> bool:
    return f.number == MODEL_METADATA_PROPS and f.wire_type == w.LEN and _metadata_key_value(f)[0] == SEAL_KEY


# ---- the decode budget ---------------------------------------------------------------------------
# A decoder allocates what a file declares only within a budget: a stream-derived bound alone lets
# a 457-byte file with a lopsided table declare 700 MB. The budget is generous for real files
# (onnxcomp's smallest, EPR at ~0.2 bits per weight, decode to ~160x their coded bytes) and can
# be raised: ``max_decoded_bytes=`` or the environment variable below.
MAX_EXPANSION = 1024  # decoded bytes per byte of the ai.onnxcomp nodes' inputs
MIN_DECODED_BYTES = 256 << 20  # below this any file may decode
MAX_DECODED_BYTES_ENV = "ONNXCOMP_MAX_DECODED_BYTES"


def decode_budget(coded_bytes: int, max_decoded_bytes: int | None = None) -> int:
    """Bytes a decode of ``coded_bytes`` of custom-node inputs may produce."""
    if max_decoded_bytes is not None:
        return int(max_decoded_bytes)
    env = os.environ.get(MAX_DECODED_BYTES_ENV)
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise ModelLoadError(f"{MAX_DECODED_BYTES_ENV}={env!r} is not a number of bytes") from None
    return max(MIN_DECODED_BYTES, MAX_EXPANSION * coded_bytes)


def check_budget(declared: int, coded_bytes: int, max_decoded_bytes: int | None, what: str) -> None:
    budget = decode_budget(coded_bytes, max_decoded_bytes)
    if declared > budget:
        raise FormatError(
            f"{what} declares {declared:,} decoded bytes from {coded_bytes:,} coded bytes, over the decode budget of "
            f"{budget:,} bytes (max({MIN_DECODED_BYTES >> 20} MiB, {MAX_EXPANSION}x the coded bytes)); if you trust "
            f"the file, raise it with max_decoded_bytes= or {MAX_DECODED_BYTES_ENV}")
