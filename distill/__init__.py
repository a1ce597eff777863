"""Distillery's core: data, models, the distillation loss and its training loop, soft targets, evaluation, the
typed config and the files of a run (Hinton, Vinyals & Dean, 2015).

The core takes and returns plain values (tensors, dataclasses) and imports neither Ray nor the packages built on
it (`ensembles`, `specialists`, `distillery`); tests/test_layers.py holds it to that.
"""

__version__ = "0.1.0"
