"""Training through ONNX Runtime, shared by the methods that train (EPR, weight fixing):

- ``session``: the torch-free training wrapper (artifacts, TrainingSession, trained weights out);
- ``losses``: the task losses (cross-entropy, distillation from the original model) and their feeds;
- ``workspace``: work directories, resumable run state, and the error-budget search.
"""
