"""onnxcomp: an ONNX post-processing compiler that makes trained networks much smaller.

This package's top level is deliberately import-light: ``onnxcomp.runtime`` (the deploy-only
decoder) must import with only onnxruntime, numpy and constriction installed, and importing it
imports this file first. The compiler (onnx, onnx-ir, passes) lives in submodules.
"""

__version__ = "0.1.0"
