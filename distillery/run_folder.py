"""The run folder's rules (docs/run-folder.md): one run per folder, continued only with `--resume` and the same
config, where only the `cluster` section may change: where a run computes does not change what it computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.config import RunConfig, dump_config, load_config, to_dict
from distill.errors import ConfigError
from distill.storage import atomic_write_text

CONFIG = "config.yaml"
METRICS = "metrics.json"
OUTCOMES = "test_outcomes.npz"
REPORT = "report.md"


def prepare_run_folder(out_dir: Path, config: RunConfig, resume: bool) -> None:
    """Write config.yaml, refusing to mix two runs in one folder: a finished model there would be reused."""
    saved = out_dir / CONFIG
    if saved.is_file() and not resume:
        raise ConfigError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --out")
    if saved.is_file() and (difference := _first_difference(saved, config)):
        raise ConfigError(f"--resume: {out_dir} holds a run of a different config ({difference})"
                          "; rerun with its config.yaml or choose another --out")
    make_folder(out_dir)
    atomic_write_text(saved, dump_config(config))


def make_folder(path: Path) -> None:
    """Create the --out folder `path`, or fail in one line: a folder that cannot be made is a usage error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out {path}: cannot create the folder ({error.strerror})") from None


def computed_settings(config: RunConfig | dict) -> dict:
    """The config without its `cluster` section: where a run computes does not change what it computes."""
    return {key: value for key, value in (to_dict(config) if isinstance(config, RunConfig) else config).items()
            if key != "cluster"}


def flat_settings(config: RunConfig | dict) -> dict[str, Any]:
    """The computed settings as dotted key -> value ("student.loss.temperature": 20.0); an empty mapping is a
    value of its own."""
    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, dict) or not node:
            return {prefix: node}
        return {k: v for key, child in node.items()
                for k, v in flat(child, f"{prefix}.{key}" if prefix else key).items()}

    return flat(computed_settings(config), "")


def _first_difference(saved: Path, config: RunConfig) -> str | None:
    """The first setting outside `cluster` on which the saved config and this one differ, or None. The saved file
    is read as a config, so a key it lacks (written before the key existed) has today's default: a run folder
    made by an earlier version resumes, and any model whose inputs the new default changes is retrained (its
    job fingerprint differs), never reused."""
    old, new = (flat_settings(c) for c in (load_config(saved), config))
    key = next((k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)), None)
    return key and f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
