"""Post-training quantization: one room for the method.

- ``quantize.py``: the ``quantize`` pass (weights -> int32 latents + Cast/Mul);
- ``step_rule.py``: the data-free step rule and rate-distortion optimized rounding;
- ``layer_stats.py``: layer input covariances measured on data;
- ``gptq.py``: error-compensating rounding (GPTQ) over those covariances;
- ``step_search.py``: the coarsest steps within an error budget on the validation split.
"""

from . import quantize  # noqa: F401  (register the pass)
