"""Teacher outputs on the transfer set, computed once and cached on disk.

The cache stores logits, not probabilities, so one entry serves every temperature. Its key is what produced the
logits (the teacher checkpoint's checksum and the precision it ran in) and a hash of the transfer inputs: a
retrained teacher, another precision or a different transfer set never reads another's entry. Each entry carries
the SHA-256 of its logits, checked on every read: a damaged entry is recomputed, never used.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import torch

from distill.storage import atomic_torch_save, sha256_tensor
from distill.streamed import Inputs, inputs_hash

log = logging.getLogger(__name__)


def _key(identity: str, inputs_hash: str) -> str:
    return hashlib.sha256(f"{identity}:{inputs_hash}".encode()).hexdigest()[:32]


def cached_logits(identities: dict[str, str], inputs: Inputs, cache_dir: str | Path,
                  compute: Callable[[list[str]], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Logits (N, C) on `inputs` of each named model, identified by what produced its logits (checkpoint checksum,
    precision); `compute(names)` is called once, for the models with no cache entry, so they can be computed
    together (in parallel on Ray)."""
    inputs_key = inputs_hash(inputs)
    paths = {name: Path(cache_dir) / f"{_key(identity, inputs_key)}.pt" for name, identity in identities.items()}
    found = {name: logits for name, path in paths.items() if (logits := _read(path, len(inputs))) is not None}
    missing = [name for name in identities if name not in found]
    if missing:
        for name, logits in compute(missing).items():
            atomic_torch_save(paths[name], {"logits": logits.cpu(), "sha256": sha256_tensor(logits)})
            found[name] = logits
        log.info("soft targets of %s computed and cached in %s", ", ".join(missing), cache_dir)
    return {name: found[name].to(inputs.device) for name in identities}


def _read(path: Path, rows: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, weights_only=True)
        intact = sha256_tensor(entry["logits"]) == entry["sha256"]
    except Exception:  # noqa: BLE001 - damaged bytes fail torch.load in many ways; each means: recompute
        intact = False
    if not intact:
        log.warning("soft-target cache entry %s is damaged or unreadable; recomputing it", path)
        return None
    return entry["logits"] if entry["logits"].shape[0] == rows else None
