"""Teacher outputs on the transfer set, computed once and cached on disk.

The cache stores logits, not probabilities, so one entry serves every temperature. Its key is the teacher's
checkpoint checksum and a hash of the transfer inputs: a retrained teacher or a different transfer set never
reads another's entry. Each entry carries the SHA-256 of its logits, checked on every read: a damaged entry is
recomputed, never used.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import torch

from distill.storage import atomic_torch_save, sha256_tensor

log = logging.getLogger(__name__)


def _key(teacher_checksum: str, inputs_hash: str) -> str:
    return hashlib.sha256(f"{teacher_checksum}:{inputs_hash}".encode()).hexdigest()[:32]


def cached_logits(checksums: dict[str, str], inputs: torch.Tensor, cache_dir: str | Path,
                  compute: Callable[[list[str]], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Logits (N, C) of each named model (by checkpoint checksum) on `inputs`; `compute(names)` is called once,
    for the models with no cache entry, so they can be computed together (in parallel on Ray)."""
    inputs_hash = sha256_tensor(inputs)
    paths = {name: Path(cache_dir) / f"{_key(checksum, inputs_hash)}.pt" for name, checksum in checksums.items()}
    found = {name: logits for name, path in paths.items() if (logits := _read(path, len(inputs))) is not None}
    missing = [name for name in checksums if name not in found]
    if missing:
        for name, logits in compute(missing).items():
            atomic_torch_save(paths[name], {"logits": logits.cpu(), "sha256": sha256_tensor(logits)})
            found[name] = logits
        log.info("soft targets of %s computed and cached in %s", ", ".join(missing), cache_dir)
    return {name: found[name].to(inputs.device) for name in checksums}


def _read(path: Path, rows: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, weights_only=True)
        intact = sha256_tensor(entry["logits"]) == entry["sha256"]
    except (RuntimeError, EOFError, KeyError, TypeError, IndexError):  # unreadable, or written by an older version
        intact = False
    if not intact:
        log.warning("soft-target cache entry %s is damaged or unreadable; recomputing it", path)
        return None
    return entry["logits"] if entry["logits"].shape[0] == rows else None
