"""Distillery core: data, models, soft-target training and evaluation (Hinton, Vinyals & Dean, 2015).

The core takes and returns plain values (tensors, dataclasses, dicts) and never imports Ray; the
ensemble and specialist layers build on it.
"""

__version__ = "0.1.0"
