"""Does bf16 cost accuracy? fp32 against bf16 over three seeds each, on four models (issue: bf16 training).

    python benchmarks/precision_accuracy.py --data-root ../shared/datasets [--runs runs/precision] [--seeds 0 1 2]
        [--cases mnist_student mnist_teacher fashion_member synthetic_specialists] [--out benchmarks/results]

Each case is `distillery run CONFIG --set ...` once per seed and precision, one run after another (the runs use
every core); a run whose folder already holds metrics.json is reused, so the script continues where it stopped.

- mnist_student: the 800-800 student of configs/mnist.yaml (T = 20, soft targets only, 60 epochs) distilled from
  one fp32 teacher of configs/mnist_no_input_dropout_200.yaml, trained first (seed 0) into RUNS/teacher;
- mnist_teacher: the 1200-1200 teacher of configs/mnist_no_input_dropout.yaml (120 epochs);
- fashion_member: one member of configs/fashion_ensemble.yaml (800-800, 12 epochs);
- synthetic_specialists: configs/synthetic_specialists.yaml, every model in the precision under test.

For each case and precision: test errors per seed, their mean and standard deviation, and where the bf16 mean lies
against the fp32 runs' range (the issue's criterion, "within"; with three seeds a range, not an interval): within
it, below it (fewer errors than every fp32 run) or above it (more errors than every fp32 run: bf16 cost accuracy). Training
seconds come along: one run's seconds are not a speed measurement on a shared machine (benchmarks/throughput.py is
that), but they show the order of the gain. Results: benchmarks/results/precision_accuracy.{json,md}.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from distillery.benchmark import distillery_command, parser, write_result
from distillery.metrics import RunMetrics, read_metrics
from distillery.run_folder import METRICS

PRECISIONS = ("fp32", "bf16")
NO_STUDENT = ["student.train.epochs=1", "baseline.enabled=false"]  # a run always trains a student: keep it short


@dataclass
class Case:
    config: str
    overrides: list[str]
    precision_keys: list[str]  # the train sections whose precision is under test
    measured: list[str]  # the models whose test errors are compared


def cases(runs: Path) -> dict[str, Case]:
    teacher = f"teacher.checkpoint={runs / 'teacher' / 'teacher.pt'}"
    return {
        "mnist_student": Case("configs/mnist.yaml", [teacher, "baseline.enabled=false"], ["student"], ["student"]),
        "mnist_teacher": Case("configs/mnist_no_input_dropout.yaml", NO_STUDENT, ["teacher"], ["teacher"]),
        "fashion_member": Case("configs/fashion_ensemble.yaml", ["ensemble.size=1", *NO_STUDENT], ["teacher"],
                               ["teacher"]),
        "synthetic_specialists": Case("configs/synthetic_specialists.yaml", [],
                                      ["teacher", "specialists", "student"],
                                      ["generalist", "specialists", "student", "baseline"]),
    }


def run(config: str, out: Path, data_root: str, overrides: list[str]) -> RunMetrics:
    """One `distillery run`, or the finished one already in `out`."""
    if not (out / METRICS).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.with_suffix(".log"), "w") as log:
            subprocess.run(distillery_command(config, out, data_root, overrides), stdout=log,
                           stderr=subprocess.STDOUT, check=True)
    return read_metrics(out / METRICS)


def summary(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "min": min(values), "max": max(values)}


def measure(name: str, case: Case, args) -> dict:
    results = {}
    for precision in PRECISIONS:
        per_seed = []
        for seed in args.seeds:
            sets = [*case.overrides, f"seed={seed}", *(f"{key}.train.precision={precision}"
                                                        for key in case.precision_keys)]
            started = time.perf_counter()
            metrics = run(case.config, args.runs / name / f"{precision}_seed{seed}", args.data_root, sets)
            per_seed.append({"seed": seed, "wall_seconds": round(time.perf_counter() - started, 1),
                             "models": {model: {"errors": metrics.models[model].errors,
                                                "accuracy": metrics.models[model].accuracy,
                                                "precision": metrics.models[model].precision,
                                                "train_seconds": metrics.models[model].train_seconds}
                                        for model in case.measured}})
        results[precision] = {"runs": per_seed, "errors": {model: summary([r["models"][model]["errors"]
                                                                          for r in per_seed])
                                                           for model in case.measured}}
    fp32, bf16 = results["fp32"]["errors"], results["bf16"]["errors"]
    results["bf16_mean_against_fp32_range"] = {model: _against(bf16[model]["mean"], fp32[model])
                                               for model in case.measured}
    return {"command": f"distillery run {case.config} " + " ".join(f"--set {o}" for o in case.overrides),
            **results}


def _against(mean: float, reference: dict) -> str:
    if mean < reference["min"]:
        return "below"
    return "above" if mean > reference["max"] else "within"


def markdown(record: dict) -> str:
    lines = ["| case | model | fp32 test errors (mean ± sd; seeds) | bf16 test errors (mean ± sd; seeds) "
             "| bf16 mean against the fp32 range | train s, fp32 -> bf16 (mean) |", "|---|---|---|---|---|---|"]
    for name, case in record["cases"].items():
        for model, against in case["bf16_mean_against_fp32_range"].items():
            cells = []
            for precision in PRECISIONS:
                s = case[precision]["errors"][model]
                cells.append(f"{s['mean']:.1f} ± {s['std']:.1f}; {', '.join(str(v) for v in s['values'])}")
            seconds = [[r["models"][model]["train_seconds"] for r in case[p]["runs"]] for p in PRECISIONS]
            trained = " -> ".join(f"{statistics.mean(s):.0f}" for s in seconds) if None not in seconds[0] else "-"
            verdict = {"within": "within", "below": "below (fewer errors)", "above": "**above (more errors)**"}
            lines.append(f"| {name} | {model} | {cells[0]} | {cells[1]} | {verdict[against]} "
                         f"| {trained} |")
    lines += ["", f"Seeds {record['seeds']}; command: `{record['command']}`; git {record['git_sha']}; "
              f"{record['machine']}.", ""]
    return "\n".join(lines)


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--data-root", required=True)
    arguments.add_argument("--runs", type=Path, default=Path("runs/precision"), help="the runs' folder")
    arguments.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    arguments.add_argument("--cases", nargs="+", default=list(cases(Path("."))))
    args = arguments.parse_args()
    chosen = {name: case for name, case in cases(args.runs).items() if name in args.cases}
    if "mnist_student" in chosen:  # its teacher: fp32, seed 0, as configs/mnist_no_input_dropout_200.yaml trains it
        run("configs/mnist_no_input_dropout_200.yaml", args.runs / "teacher", args.data_root,
            ["teacher.train.precision=fp32", *NO_STUDENT])
    record = {"seeds": args.seeds, "cases": {name: measure(name, case, args) for name, case in chosen.items()}}
    if "mnist_student" in chosen:
        record["mnist_student_teacher_errors"] = read_metrics(args.runs / "teacher" / METRICS).models["teacher"].errors
    write_result(args.out, "precision_accuracy", record, markdown)


if __name__ == "__main__":
    main()
