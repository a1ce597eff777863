"""Seeds: validated, returned, and derived per model so every member's seed is recorded and reproducible."""

import hashlib
import random

import numpy as np
import torch

from distill.errors import ConfigError


def set_seed(seed: int) -> int:
    """Seed Python, NumPy and torch; returns the seed so callers can record it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def derive_seed(base: int, name: str) -> int:
    """A seed for the model called `name`, fixed by the run's base seed (stable across Python processes)."""
    digest = hashlib.sha256(f"{base}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
