"""Checkpoints that carry their model spec, resolved config, seed and versions, and load with weights_only=True.

Each checkpoint `X.pt` has a sidecar `X.pt.sha256`; loading verifies it, so a file that was changed after
it was written is refused instead of silently used.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import CheckpointError
from distill.models import create_model
from distill.provenance import versions
from distill.storage import atomic_torch_save, atomic_write_text, sha256_file


def save_checkpoint(path: str | Path, model: nn.Module, spec: dict[str, Any], *, num_classes: int,
                    input_shape: tuple[int, ...], seed: int, config: dict[str, Any], extra: dict | None = None) -> str:
    """Write the checkpoint atomically, then its checksum; returns the checksum (the model's identity)."""
    path = Path(path)
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "model": spec,
               "num_classes": num_classes, "input_shape": list(input_shape), "seed": seed, "config": config,
               "versions": versions(), **(extra or {})}
    atomic_torch_save(path, payload)
    checksum = sha256_file(path)
    atomic_write_text(checksum_path(path), checksum + "\n")
    return checksum


def checksum_path(path: str | Path) -> Path:
    """The sidecar holding the checkpoint's SHA-256; written last, so it also marks a checkpoint as complete."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from its checkpoint after verifying the checksum; returns (model, payload).

    The payload gains `sha256`, the verified checksum of the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint {path} has no checksum file {sidecar.name}")
    checksum = sha256_file(path)
    if checksum != sidecar.read_text().strip():
        raise CheckpointError(f"checkpoint {path} does not match its checksum: it was changed after it was written")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
        spec = payload["model"]
        model = create_model(spec["name"], payload["num_classes"], tuple(payload["input_shape"]), **spec["kwargs"])
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {first_line}") from None
    payload["sha256"] = checksum  # verified above; callers use it as the model's identity
    return model.to(device), payload
