"""Stage manifests: what a finished stage of a run was computed from and what it wrote, so that `--resume` reuses
a stage only while its inputs are unchanged and its outputs intact, and reruns it otherwise.

    manifests/STAGE.json   {"stage", "key", "inputs", "outputs": {path in the run folder: sha256}}, written last
    logs/stages.jsonl      "ran" when a stage is sealed; on --resume first "reused", or "stale" (its manifest no
                           longer matches its inputs or outputs, or cannot be read: the stage is rerun, never
                           silently reused, and logs "ran" again)

Trained models keep the same promise on their own (ensembles.jobs, with the `inputs` key stored in each
checkpoint); this module covers the stages between them: clustering, evaluation and the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from distill.storage import append_json_line, atomic_write_json, fingerprint, sha256_file

MANIFESTS = "manifests"
LOG = Path("logs") / "stages.jsonl"


class StageManifest:
    """The manifest of one stage of the run in `run_dir`, computed from `inputs` (config sections, upstream
    checksums)."""

    def __init__(self, run_dir: str | Path, name: str, inputs: dict[str, Any]):
        self.run_dir, self.name, self.inputs = Path(run_dir), name, inputs
        self.key = fingerprint(inputs)
        self.path = self.run_dir / MANIFESTS / f"{name}.json"

    def reusable(self) -> bool:
        """Whether a finished attempt with the same inputs left every output intact; logs reused or stale."""
        if not self.path.is_file():
            return False
        try:
            manifest = json.loads(self.path.read_text())
            reusable = manifest["key"] == self.key and all(
                (self.run_dir / name).is_file() and sha256_file(self.run_dir / name) == checksum
                for name, checksum in manifest["outputs"].items())
        except (ValueError, KeyError, TypeError, AttributeError):  # damaged by hand or by a disk: not evidence
            reusable = False
        self._log("reused" if reusable else "stale")
        return reusable

    def seal(self, outputs: list[Path]) -> None:
        """Record the finished stage; called after its outputs are written, so a crash before leaves no manifest."""
        checksums = {str(Path(p).relative_to(self.run_dir)): sha256_file(p) for p in outputs}
        atomic_write_json(self.path, {"stage": self.name, "key": self.key, "inputs": self.inputs,
                                      "outputs": checksums})
        self._log("ran")

    def _log(self, event: str) -> None:
        append_json_line(self.run_dir / LOG, {"time": time.time(), "stage": self.name, "event": event})
