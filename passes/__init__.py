"""The passes of onnxcomp; importing this package registers them all.

``normalize.py`` and ``pack.py`` serve every method; each method is a package of its own
(``quantize/``, ``epr/``, ``wfn/``) that ends in the intermediate form ``pack`` codes
(``onnxcomp.graph.forms``).
"""

from . import epr, normalize, pack, quantize, wfn  # noqa: F401
