"""WFN, weight fixing networks: one room for the method.

- ``weight_fix.py``: the ``weight-fix`` pass (rounds, budget search, the codebook + Gather form);
- ``clustering.py``: which weights a round fixes, and to which power of two (numpy);
- ``retraining.py``: retraining the free weights between rounds through ONNX Runtime training.
"""

from . import weight_fix  # noqa: F401  (register the pass)
