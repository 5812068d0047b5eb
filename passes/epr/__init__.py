"""EPR, entropy-penalized reparameterization: one room for the method.

- ``epr_reparam.py``: the ``epr-reparam`` pass (weights -> latents, decoders, rate paths);
- ``form.py``: the training form it writes (metadata, rounding) and ``finalize_epr``, which ends it;
- ``finetune.py``: the ``finetune`` pass (training, lambda search) over ``trainer.py``'s loop;
- ``epr_finalize.py``: the ``epr-finalize`` pass, for pipelines that do not train;
- ``priors.py``: the learned priors whose bits the rate paths compute.
"""

from . import epr_finalize, epr_reparam, finetune  # noqa: F401  (register the passes)
