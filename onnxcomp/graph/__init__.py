"""onnx-ir helpers every pass shares: graph surgery (``edit``), what a weight is (``weights``),
the forms a model takes between passes (``forms``), and the ``ai.onnxcomp`` op schemas the
verifier checks against (``schemas``)."""
