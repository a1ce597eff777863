"""Did a change of the code change what runs compute? Every value of two run folders' metrics.json, compared.

A refactor must leave results alone. Run the demo and the two fixed-seed runs of benchmarks/refactor_check/ before
and after the change (the same commands on the same machine: floats differ between hosts), then compare:

    distillery run --out runs/before/demo
    distillery run benchmarks/refactor_check/ensemble.yaml --out runs/before/ensemble
    distillery run benchmarks/refactor_check/specialists.yaml --out runs/before/specialists
    (the same into runs/after/ with the changed code)
    python benchmarks/same_metrics.py runs/before runs/after [--out benchmarks/results]

Both files are read through `read_metrics` (an older schema version is upgraded first) and compared value by
value; what says when and where a run happened (seconds, provenance, checkpoint checksums, which hold training
times) is left out. config.yaml must be identical too. Writes benchmarks/results/same_metrics.json; exits 1 on any
difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

from distill.records import to_plain
from distillery.benchmark import parser, write_result
from distillery.metrics import read_metrics
from distillery.run_folder import CONFIG, METRICS

# When and where a run happened, not what it computed.
NOT_COMPARED = {"seconds", "train_seconds", "git_sha", "machine", "versions", "checksum"}
NOT_COMPARED_SECTIONS = {("teacher", "specialists")}  # specialist name -> checkpoint checksum


def differences(before, after, path: tuple = ()) -> list[str]:
    """Every place where `after` differs from `before` (plain data), by dotted path."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(before.keys() | after.keys(), key=str):
            if key in NOT_COMPARED or (*path, key) in NOT_COMPARED_SECTIONS:
                continue
            found += differences(before.get(key), after.get(key), (*path, key))
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [line for index, (a, b) in enumerate(zip(before, after))
                for line in differences(a, b, (*path, f"[{index}]"))]
    return [] if before == after else [f"{'.'.join(map(str, path))}: {before!r} -> {after!r}"]


def compare(before: Path, after: Path) -> dict:
    """The differences between two run folders' metrics and configs, and the commits that made each."""
    metrics = [read_metrics(run / METRICS) for run in (before, after)]
    return {"differences": differences(*map(to_plain, metrics)),
            "config_identical": (before / CONFIG).read_text() == (after / CONFIG).read_text(),
            "git_sha_before": metrics[0].run.git_sha, "git_sha_after": metrics[1].run.git_sha}


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("before", type=Path, help="folder of the run folders made before the change")
    arguments.add_argument("after", type=Path, help="folder of the same runs made after it")
    args = arguments.parse_args()
    runs = sorted(path.name for path in args.before.iterdir() if (path / METRICS).is_file())
    results = {run: compare(args.before / run, args.after / run) for run in runs}
    for run, result in results.items():
        print(f"{run}: {len(result['differences'])} differences, config.yaml identical: {result['config_identical']}")
        for line in result["differences"][:20]:
            print(f"    {line}")
    write_result(args.out, "same_metrics", {"runs": results})
    sys.exit(0 if all(not r["differences"] and r["config_identical"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
