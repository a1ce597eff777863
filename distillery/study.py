"""A study: one pipeline run at every point of a grid of settings, times several seeds, in one folder.

`DIR/study.json` is written before any run starts and updated as each one ends: the study's definition, every
run's folder and status, and, once compared, the comparison (distillery.compare). `distillery sweep --resume`
reads it back to continue a study whose driver died.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import yaml

from distill.config import RunConfig, load_config
from distill.errors import ConfigError, DistilleryError
from distill.records import from_plain, to_plain
from distill.storage import atomic_write_json
from distillery import DEMO_CONFIG
from distillery.comparison import Comparison

STUDY = "study.json"
STUDY_VERSION = 1

RunStatus = Literal["pending", "finished", "failed"]


@dataclass
class StudyDefinition:
    """What `distillery sweep` was asked: the CONFIG (None: the demo), the --set overrides every run shares, the
    grid (key -> values) and the seeds."""

    config: str | None
    overrides: list[str]
    grid: dict[str, list[Any]]
    seeds: list[int]


@dataclass
class StudyRun:
    """One run of a study: its folder (relative to the study's), its grid values and seed, and how it ended."""

    folder: str
    settings: dict[str, Any]
    seed: int
    status: RunStatus = "pending"
    error: str | None = None
    seconds: float | None = None


@dataclass
class Study:
    version: int
    definition: StudyDefinition | None  # None: a comparison of run folders given by hand
    runs: list[StudyRun]
    comparison: Comparison | None = None


@dataclass
class StudyPoint:
    """A run to make: its record and its resolved config."""

    run: StudyRun
    config: RunConfig = field(repr=False)


def parse_seeds(text: str) -> list[int]:
    """`--seeds 3` is seeds 0, 1, 2; `--seeds 0,5,7` (or `[0, 5, 7]`) is taken as given."""
    try:
        value = yaml.safe_load(text if "," not in text or text.startswith("[") else f"[{text}]")
    except yaml.YAMLError:
        value = None
    seeds = list(range(value)) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in seeds):
        raise ConfigError(f"--seeds expects a count N >= 1 or a list of seeds >= 0 such as 0,1,2, got {text!r}")
    if not seeds:
        raise ConfigError(f"--seeds {text} names no seed: a study needs at least one")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text} names a seed twice")
    return seeds


def parse_grid(assignments: list[str]) -> dict[str, list[Any]]:
    """`--grid KEY=[v1, v2]` options as key -> values (YAML lists, at least one value each)."""
    grid: dict[str, list[Any]] = {}
    for assignment in assignments:
        key, separator, raw = assignment.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(f"--grid expects KEY=[VALUE, ...], got {assignment!r}")
        try:
            values = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--grid {key}: cannot parse {raw!r} as a YAML list") from None
        if not isinstance(values, list):
            raise ConfigError(f"--grid {key}: expects a list such as [2, 4], got {raw!r}")
        if not values:
            raise ConfigError(f"--grid {key}: the list of values is empty")
        if key in grid or key == "seed":
            raise ConfigError(f"--grid {key}: " + ("given twice" if key in grid else "use --seeds for seeds"))
        grid[key] = values
    return grid


def study_points(definition: StudyDefinition) -> list[StudyPoint]:
    """Every (grid point, seed) with its resolved config, each checked now: a bad key or value in any point fails
    before anything trains."""
    points = []
    for values in itertools.product(*definition.grid.values()):
        settings = dict(zip(definition.grid, values))
        assignments = [*definition.overrides, *(f"{key}={_yaml(value)}" for key, value in settings.items())]
        for seed in definition.seeds:
            folder = "/".join([*(f"{key}={_folder_text(value)}" for key, value in settings.items()), f"seed={seed}"])
            config = load_config(definition.config or DEMO_CONFIG, [*assignments, f"seed={seed}"])
            points.append(StudyPoint(StudyRun(folder, settings, seed), config))
    if len({point.run.folder for point in points}) < len(points):
        raise ConfigError("two points of the grid would share a run folder: give each value once")
    return points


def write_study(study_dir: Path, study: Study) -> None:
    atomic_write_json(Path(study_dir) / STUDY, to_plain(study))


def read_study(study_dir: Path) -> Study:
    path = Path(study_dir) / STUDY
    try:
        data = json.loads(path.read_text())
        try:
            return from_plain(Study, data, label="study.json key")
        except DistilleryError:
            if not isinstance(data, dict) or data.get("comparison") is None:
                raise
            # The comparison is made from the runs again by every sweep and compare: one an older Distillery saved
            # in another layout is dropped, not a reason to refuse the study.
            return from_plain(Study, {**data, "comparison": None}, label="study.json key")
    except (ValueError, DistilleryError) as error:
        raise DistilleryError(f"{path} is not a study record: {error}") from None


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _folder_text(value: Any) -> str:
    """A grid value as a path segment: its YAML without spaces after separators, and without '/'."""
    return quote(_yaml(value).replace(", ", ",").replace(": ", ":"), safe="=,[]{}:.-_+ ")
