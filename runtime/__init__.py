"""Deploy-only runtime of the ``ai.onnxcomp`` domain: needs onnxruntime, numpy and constriction.

- :func:`InferenceSession`: decode once at load, return a plain onnxruntime session.
- :func:`CustomOpSession`: run compressed files as they are, with the custom op
  (onnxruntime-extensions), every node checked first; :func:`register` for trusted files.
- :func:`decode_model`: standard ONNX bytes, for runtimes without the custom op.
"""

from .custom_op import CustomOpSession, register
from .format import DOMAIN
from .load import InferenceSession, decode_model

__all__ = ["DOMAIN", "CustomOpSession", "InferenceSession", "decode_model", "register"]
