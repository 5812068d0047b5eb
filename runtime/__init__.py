"""Deploy-only runtime of the ``ai.onnxcomp`` domain: needs onnxruntime, numpy and constriction.

- :func:`InferenceSession`: decode once at load, return a plain onnxruntime session.
- :func:`CustomOpSession`: run compressed files as they are, with the custom op (the native
  library where built, else onnxruntime-extensions), the file checked first; :func:`register`
  (Python op) for trusted files.
- :func:`native_library_path`: the native op library, for any onnxruntime host
  (``SessionOptions.register_custom_ops_library``).
- :func:`decode_model`: standard ONNX bytes, for runtimes without the custom op.
"""

from .custom_op import CustomOpSession, register
from .format import DOMAIN
from .load import InferenceSession, decode_model
from .native import NativeLibraryMissing, native_library_path

__all__ = ["DOMAIN", "CustomOpSession", "InferenceSession", "NativeLibraryMissing", "decode_model",
           "native_library_path", "register"]
