"""How the scripts in benchmarks/ record their results: one habit for all of them.

- `--out DIR` is always the results folder (default benchmarks/results); a script writes `DIR/NAME.json` and,
  where it has a table, `DIR/NAME.md`. Run folders and scratch space are `--runs` / `--work`.
- `write_result` puts the command that produced a result (paths relative to the repository), the git commit,
  the package versions, the machine and the time in front of it, and writes atomically.
- `write_table` is the table scripts' one function: each entry is summarised from its run folder's metrics.json
  (read as `RunMetrics`) where that run is at hand, else kept as committed (a run made on another host or in an
  earlier session), so a rerun never drops rows it cannot remake.

Scripts run as `python benchmarks/NAME.py` from the repository root, in the environment Distillery is installed in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from distill.provenance import git_sha, machine, versions
from distill.storage import atomic_write_json, atomic_write_text
from distillery.metrics import RunMetrics, read_metrics
from distillery.run_folder import METRICS

RESULTS = Path("benchmarks") / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the shared `--out`."""
    made = argparse.ArgumentParser(description=description)
    made.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    return made


def command() -> str:
    """This script's command line, with paths relative to the working folder (results name no machine's paths)."""
    def portable(arg: str) -> str:
        return os.path.relpath(arg) if os.path.isabs(arg) and os.path.exists(arg) else arg

    return " ".join(["python", portable(sys.argv[0]), *map(portable, sys.argv[1:])])


def write_result(out: Path, name: str, result: dict, markdown: str | Callable[[dict], str] | None = None) -> Path:
    """Write `result` with its provenance to out/name.json, and its table to out/name.md: `markdown` as given, or
    made from the written record (provenance included) when it is a function. Returns the JSON path."""
    record = {"command": command(), "git_sha": git_sha(), "versions": versions(), "machine": machine(),
              "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    path = Path(out) / f"{name}.json"
    atomic_write_json(path, record)
    if markdown is not None:
        atomic_write_text(path.with_suffix(".md"), markdown(record) if callable(markdown) else markdown)
    return path


def read_result(out: Path, name: str) -> dict:
    """The committed result out/name.json, or {} when there is none yet."""
    path = Path(out) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class TableEntry:
    """One entry of a results table: what `summarise` makes of the run in `run_dir`, under `key`."""

    key: str
    run_dir: Path
    summarise: Callable[[RunMetrics], Any]


def write_table(out: Path, name: str, entries: list[TableEntry], markdown: Callable[[dict[str, Any]], str]
                ) -> dict[str, Any]:
    """The entries summarised from their runs, or kept as committed where the run is not at hand; written as
    out/name.json (under "entries") and out/name.md. Returns the entries."""
    committed = read_result(out, name).get("entries", {})
    table = {}
    for entry in entries:
        metrics_path = Path(entry.run_dir) / METRICS
        if metrics_path.is_file():
            table[entry.key] = entry.summarise(read_metrics(metrics_path))
        elif entry.key in committed:
            table[entry.key] = committed[entry.key]
    text = markdown(table)
    write_result(out, name, {"entries": table}, text)
    return table


def table_script(description: str, name: str, entries: Callable[[Path], list[TableEntry]],
                 markdown: Callable[[dict[str, Any]], str]) -> None:
    """The main of a table script: `entries(runs)` for the --runs folder, written by `write_table` to --out."""
    arguments = parser(description)
    arguments.add_argument("--runs", type=Path, default=Path("runs"), help="the run folders (default runs)")
    args = arguments.parse_args()
    print(markdown(write_table(args.out, name, entries(args.runs), markdown)))


def shown_precision(recorded: str | dict[str, str | None] | None) -> str:
    """How a table names the precision of an entry: a model's precision, or those of a run's models. An entry
    without one comes from a run made before precisions were recorded, which trained in fp32."""
    values = set(recorded.values()) if isinstance(recorded, dict) else {recorded}
    return ", ".join(sorted(values - {None})) or "fp32"


def distillery_command(config: str, out: Path, data_root: str, overrides: list[str]) -> list[str]:
    """`distillery run CONFIG --out OUT --data-root ROOT --set ...` with this interpreter's installation."""
    command_line = [sys.executable, "-m", "distillery", "run", config, "--out", str(out), "--data-root", data_root]
    return command_line + [arg for override in overrides for arg in ("--set", override)]
