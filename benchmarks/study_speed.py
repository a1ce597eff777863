"""A study of small runs on Ray against the same runs started one after another, in one invocation.

One side is `distillery sweep [CONFIG] --seeds 2 --grid KEY=[A, B] --set ...`: four runs as Ray tasks on one Ray
instance. The other is the same four runs as four `distillery run` commands (same settings and seeds), one after
another, as a user would start them. Each side is its own process with its own soft-target cache; the sides
alternate over --repeats rounds, so the host's drift falls on both. Ratio: study wall / sequential wall.

    python benchmarks/study_speed.py [--repeats 2] [--out benchmarks/results]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill.data import resolve_data_root
from distillery import DEMO_CONFIG
from distillery.benchmark import distillery_command, parser, write_result
from distillery.metrics import read_metrics
from distillery.run_folder import METRICS
from distillery.study import read_study

GRID_KEY, GRID_VALUES, SEEDS = "student.loss.temperature", [2, 4], [0, 1]
SHARED = ["teacher.train.epochs=3"]


def timed(commands: list[list[str]], cache: Path) -> float:
    started = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "DISTILLERY_CACHE": str(cache)})
    return time.perf_counter() - started


def student_accuracies(folders: list[Path]) -> list[float]:
    return [read_metrics(folder / METRICS).models["student"].accuracy for folder in folders]


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--config", default=str(DEMO_CONFIG), help="the runs' config (default: the demo)")
    arguments.add_argument("--repeats", type=int, default=2)
    args = arguments.parse_args()
    data_root = str(resolve_data_root(None))
    rounds = []
    for repeat in range(args.repeats):
        scratch = Path(tempfile.mkdtemp(prefix="study-speed-"))
        try:
            runs = [(value, seed, scratch / "sequential" / f"{value}-{seed}") for value in GRID_VALUES
                    for seed in SEEDS]
            sequential = [distillery_command(args.config, out, data_root, [*SHARED, f"{GRID_KEY}={value}",
                                                                           f"seed={seed}"])
                          for value, seed, out in runs]
            study = [[sys.executable, "-m", "distillery", "sweep", args.config, "--seeds", ",".join(map(str, SEEDS)),
                      "--grid", f"{GRID_KEY}={GRID_VALUES}", "--data-root", data_root, "--out", str(scratch / "study"),
                      *[arg for override in SHARED for arg in ("--set", override)]]]
            sides = {"sequential": sequential, "study": study}
            order = ["sequential", "study"] if repeat % 2 == 0 else ["study", "sequential"]
            seconds = {side: timed(sides[side], scratch / f"cache-{side}") for side in order}
            finished = read_study(scratch / "study")
            rounds.append({"order": order, "seconds": seconds, "ratio": seconds["study"] / seconds["sequential"],
                           "student_accuracy": {
                               "sequential": student_accuracies([out for _, _, out in runs]),
                               "study": student_accuracies([scratch / "study" / r.folder for r in finished.runs])}})
            print(f"round {repeat}: sequential {seconds['sequential']:.1f} s, study {seconds['study']:.1f} s, "
                  f"ratio {rounds[-1]['ratio']:.2f}")
        finally:
            shutil.rmtree(scratch)
    ratios = [r["ratio"] for r in rounds]
    result = {"config": os.path.relpath(args.config), "grid": {GRID_KEY: GRID_VALUES}, "seeds": SEEDS,
              "shared_overrides": SHARED, "cpus": os.cpu_count(), "rounds": rounds,
              "ratio_mean": statistics.mean(ratios), "ratio_range": [min(ratios), max(ratios)], "goal": 0.8}
    write_result(args.out, "study_speed", result)
    print(f"study / sequential: mean {result['ratio_mean']:.2f} over {len(ratios)} rounds "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}; goal <= 0.8)")


if __name__ == "__main__":
    main()
