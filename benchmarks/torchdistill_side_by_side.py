"""Distillery against torchdistill on the same MNIST distillation, measured side by side in one run.

    python benchmarks/torchdistill_side_by_side.py --data-root ../shared/datasets
        [--teacher-epochs 20] [--epochs 60] [--seeds 3] [--work runs/torchdistill_bench] [--out benchmarks/results]

1. A 1200-1200 teacher (configs/mnist.yaml's recipe, `--teacher-epochs` long, fp32) is trained once by
   Distillery, or taken from `--teacher`; both sides distil from this very checkpoint.
2. Distillery: `distillery run configs/mnist.yaml` with that teacher, no baseline, a fresh soft-target cache (the
   teacher's logits are computed inside the timed run), the student on `precision: auto`, the default.
3. torchdistill (from the registry, installed by this script into benchmarks/.venv-torchdistill, so the project
   never depends on it; that venv sees this interpreter's packages, so both sides run the same torch build and
   torchdistill imports Distillery's model definitions):
   benchmarks/torchdistill/run_kd.py with benchmarks/torchdistill/mnist_kd.yaml, the same student module, epochs,
   batch size, optimizer, schedule, T and loss weights, in fp32 as its users run it. (Its one route to mixed
   precision, a Hugging Face accelerate Accelerator handed to its DistillationBox, does not run bf16 on a CPU:
   torchdistill 1.1.5 reads an attribute accelerate 1.x no longer has, and with accelerate 0.34 it casts the
   teacher to fp16 and fails on fp32 inputs.)
Each side is one process timed end to end (start, data, training, test evaluation); both report their training
loop's seconds too. With seed 0 Distillery runs before and after torchdistill, so the shared machine's drift shows
in the gap between its two runs; each further seed (`--seeds`, the student's initialisation and batch order on both
sides) runs Distillery then torchdistill, for the errors' seed spread and each seed's time ratio. Results:
benchmarks/results/torchdistill.{json,md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill.config import RunConfig, from_dict
from distill.intervals import seed_interval, spread
from distill.provenance import git_sha, machine
from distill.records import to_plain
from distillery.benchmark import command, parser, write_result
from distillery.metrics import read_metrics
from distillery.run_folder import METRICS

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "benchmarks" / ".venv-torchdistill"
TORCHDISTILL = "torchdistill==1.1.5"
CONFIG = REPO / "benchmarks" / "torchdistill" / "mnist_kd.yaml"


def ensure_torchdistill_env() -> Path:
    """A venv of its own for torchdistill that sees this interpreter's packages through a .pth file: the same torch
    build on both sides, and seconds to set up instead of a second multi-gigabyte torch install."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        ours = [path for path in sys.path if path.endswith("site-packages")]
        theirs = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
        (Path(theirs) / "distillery_packages.pth").write_text("\n".join(ours) + "\n")
    if subprocess.run([str(python), "-c", "import torchdistill, distill"], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", TORCHDISTILL], check=True)
    return python


def timed(argv: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, cwd=REPO, env={**os.environ, **(env or {})})
    return time.perf_counter() - started


def distillery(*args: str) -> list[str]:
    """`distillery run configs/mnist.yaml` on the CPU, where torchdistill's side runs too."""
    return [str(Path(sys.executable).parent / "distillery"), "run", str(REPO / "configs" / "mnist.yaml"), "--set",
            "device=cpu", *args]


def train_teacher(work: Path, data_root: str, epochs: int) -> Path:
    """Train the teacher, or reuse it: --resume reuses a finished run of this very config and refuses another. In
    fp32: torchdistill runs a teacher in fp32, and Distillery predicts with one in the precision it trained in."""
    out = work / "teacher"
    timed(distillery("--out", str(out), "--data-root", data_root, "--resume", "--set",
                     f"teacher.train.epochs={epochs}", "--set", "teacher.train.precision=fp32", "--set",
                     "student.train.epochs=1", "--set", "baseline.enabled=false"))
    return out / "teacher.pt"


def teacher_epochs(path: Path) -> int:
    import torch

    return from_dict(RunConfig, torch.load(path, weights_only=True)["config"]).teacher.train.epochs


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--data-root", required=True)
    arguments.add_argument("--teacher", help="a Distillery 1200-1200 MNIST teacher checkpoint (default: train one)")
    arguments.add_argument("--teacher-epochs", type=int, default=20)
    arguments.add_argument("--epochs", type=int, default=60)
    arguments.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 of the student on both sides")
    arguments.add_argument("--work", default="runs/torchdistill_bench", help="scratch folder of both sides' runs")
    args = arguments.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    python = ensure_torchdistill_env()
    teacher = Path(args.teacher) if args.teacher else train_teacher(work, args.data_root, args.teacher_epochs)

    def ours(seed: int) -> dict:
        out = work / f"ours_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
        with tempfile.TemporaryDirectory() as cache:
            wall = timed(distillery("--out", str(out), "--data-root", args.data_root, "--set",
                                    f"teacher.checkpoint={teacher}", "--set", "baseline.enabled=false", "--set",
                                    f"student.train.epochs={args.epochs}", "--set", f"seed={seed}"),
                         env={"DISTILLERY_CACHE": cache})
        student = read_metrics(out / METRICS).models["student"]
        return {"seed": seed, "wall_seconds": wall, "train_seconds": student.train_seconds,
                "test_errors": student.errors, "precision": student.precision}

    def theirs(seed: int) -> dict:
        result = work / f"torchdistill_seed{seed}.json"
        wall = timed([str(python), str(REPO / "benchmarks" / "torchdistill" / "run_kd.py"), "--config", str(CONFIG),
                      "--teacher", str(teacher), "--data-root", args.data_root, "--epochs", str(args.epochs),
                      "--seed", str(seed), "--result", str(result)])
        measured = json.loads(result.read_text())
        return {"seed": seed, "wall_seconds": wall, "train_seconds": measured["train_seconds"],
                "test_errors": measured["errors"], "version": measured["torchdistill"], "torch": measured["torch"]}

    our_runs, their_runs = [ours(0)], [theirs(0)]
    our_runs.append(ours(0))  # after theirs: the machine's drift shows as the gap between the two
    for seed in range(1, args.seeds):
        our_runs.append(ours(seed))
        their_runs.append(theirs(seed))
    bracket = {key: (our_runs[0][key] + our_runs[1][key]) / 2 for key in ("wall_seconds", "train_seconds")}
    ours_by_seed = [our_runs[0], *our_runs[2:]]  # one run per seed for the errors (seed 0's two runs agree)
    our_errors = [run["test_errors"] for run in ours_by_seed]
    their_errors = [run["test_errors"] for run in their_runs]
    difference = seed_interval([b - a for a, b in zip(our_errors, their_errors)])  # None for one seed
    record = {
        "setting": f"MNIST, 1200-1200 teacher ({teacher_epochs(teacher)} epochs, fp32) -> 800-800 "
                   f"student, {args.epochs} epochs, batch 128, SGD Nesterov 0.9, one-cycle lr 0.05, T = 20, "
                   "soft term only (weight T^2), CPU",
        "order": "seed 0: Distillery, torchdistill, Distillery (its times: the mean of the two); then each further "
                 "seed: Distillery, torchdistill",
        "teacher_errors": read_metrics(work / "teacher" / METRICS).models["teacher"].errors if not args.teacher
        else None,
        "distillery": {**bracket, "runs": our_runs, "errors": to_plain(spread(our_errors))},
        "torchdistill": {"runs": their_runs, "errors": to_plain(spread(their_errors)),
                         "version": their_runs[0]["version"], "torch": their_runs[0]["torch"]},
        "speedup_wall": their_runs[0]["wall_seconds"] / bracket["wall_seconds"],
        "speedup_train_loop": their_runs[0]["train_seconds"] / bracket["train_seconds"],
        "speedup_wall_by_seed": [theirs_["wall_seconds"] / ours_["wall_seconds"]
                                 for ours_, theirs_ in zip(ours_by_seed, their_runs)],
        "errors_torchdistill_minus_distillery": None if difference is None else to_plain(difference),
    }
    write_result(args.out, "torchdistill", record, markdown)
    print(markdown({**record, "command": command(), "git_sha": git_sha(), "machine": machine()}))


def markdown(record: dict) -> str:
    ours, theirs = record["distillery"], record["torchdistill"]
    first, second = ours["runs"][:2]
    precisions = ", ".join(sorted({run["precision"] for run in ours["runs"]}))

    def errors(side: dict) -> str:
        seeds = ", ".join(str(run["test_errors"]) for run in side["runs"] if run is not second)
        summary = side["errors"]
        return seeds if summary["sd"] is None else f"{summary['mean']:.1f} ± {summary['sd']:.1f} ({seeds})"

    difference = record["errors_torchdistill_minus_distillery"]
    ratios = record["speedup_wall_by_seed"]
    lines = [
        f"Setting: {record['setting']}; teacher {record['teacher_errors']} test errors. Order: {record['order']}.",
        "", "| | wall time (s), seed 0 | training loop (s), seed 0 | student test errors by seed |",
        "|---|---|---|---|",
        f"| Distillery, precision auto ({precisions}; mean of {first['wall_seconds']:.1f} and "
        f"{second['wall_seconds']:.1f} s) | {ours['wall_seconds']:.1f} | {ours['train_seconds']:.1f} | "
        f"{errors(ours)} |",
        f"| torchdistill {theirs['version']} (fp32, as its users run it) | {theirs['runs'][0]['wall_seconds']:.1f} | "
        f"{theirs['runs'][0]['train_seconds']:.1f} | {errors(theirs)} |",
        f"| ratio (torchdistill / Distillery) | {record['speedup_wall']:.2f}x | "
        f"{record['speedup_train_loop']:.2f}x | |",
        ""]
    if len(ratios) > 1:
        lines.append(f"Wall-time ratio seed by seed: {', '.join(f'{r:.2f}x' for r in ratios)}. Errors, torchdistill "
                     f"minus Distillery, seed i against seed i: 95 % interval [{difference['low']:+.1f}, "
                     f"{difference['high']:+.1f}].")
        lines.append("")
    lines += [f"Command: `{record['command']}`; git {record['git_sha']}; {record['machine']}; torch {theirs['torch']}.",
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
