"""Teacher outputs on the transfer set, computed once and cached on disk.

The cache stores logits, not probabilities, so one entry serves every temperature. Its key is the teacher's
checkpoint checksum and a hash of the transfer inputs: a retrained teacher or a different transfer set never
reads another's entry.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from distill.storage import atomic_torch_save, sha256_tensor
from distill.train import predict_logits

log = logging.getLogger(__name__)


def cache_key(teacher_checksum: str, transfer_inputs: torch.Tensor) -> str:
    return hashlib.sha256(f"{teacher_checksum}:{sha256_tensor(transfer_inputs)}".encode()).hexdigest()[:32]


def cached_teacher_logits(teacher: nn.Module, teacher_checksum: str, transfer_inputs: torch.Tensor,
                          cache_dir: str | Path) -> torch.Tensor:
    """The teacher's logits (N, C) on `transfer_inputs`, from the cache when the same teacher saw the same inputs."""
    path = Path(cache_dir) / f"{cache_key(teacher_checksum, transfer_inputs)}.pt"
    if path.is_file():
        try:
            logits = torch.load(path, weights_only=True)
            if logits.shape[0] == len(transfer_inputs):
                log.info("soft targets from cache %s", path)
                return logits.to(transfer_inputs.device)
        except (RuntimeError, EOFError):
            log.warning("soft-target cache entry %s is unreadable; recomputing it", path)
    logits = predict_logits(teacher, transfer_inputs)
    atomic_torch_save(path, logits.cpu())
    log.info("soft targets computed and cached in %s", path)
    return logits
