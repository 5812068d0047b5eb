"""The passes of onnxcomp, one module each; importing this package registers them all."""

from . import epr_reparam, finetune, normalize, pack, quantize, weight_fix  # noqa: F401
