"""Deploy-only runtime of the ``ai.onnxcomp`` domain: needs onnxruntime, numpy and constriction.

- :func:`InferenceSession`: decode once at load, return a plain onnxruntime session.
- :func:`register`: run compressed files as they are, with the custom op (onnxruntime-extensions).
- :func:`decode_model`: standard ONNX bytes, for runtimes without the custom op.
"""

from .custom_op import register
from .format import DOMAIN
from .load import InferenceSession, decode_model

__all__ = ["DOMAIN", "InferenceSession", "decode_model", "register"]
