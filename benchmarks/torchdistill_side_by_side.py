"""Distillery against torchdistill on the same MNIST distillation, measured side by side in one run.

    python benchmarks/torchdistill_side_by_side.py --data-root ../shared/datasets
        [--teacher-epochs 20] [--epochs 60] [--their-precisions no bf16] [--work runs/torchdistill_bench]
        [--out benchmarks/results]

1. A 1200-1200 teacher (configs/mnist.yaml's recipe, `--teacher-epochs` long, fp32) is trained once by
   Distillery, or taken from `--teacher`; both sides distil from this very checkpoint.
2. Distillery: `distillery run configs/mnist.yaml` with that teacher, no baseline, a fresh soft-target cache (the
   teacher's logits are computed inside the timed run), the student on `precision: auto`, the default.
3. torchdistill (from the registry, installed by this script into benchmarks/.venv-torchdistill with Hugging
   Face accelerate, so the project never depends on them; Distillery goes in beside them without dependencies,
   for the model definitions): benchmarks/torchdistill/run_kd.py with benchmarks/torchdistill/mnist_kd.yaml, the
   same student module, epochs, batch size, optimizer, schedule, T and loss weights. `no` runs it as its users do
   by default (fp32); `bf16` hands its DistillationBox an accelerate Accelerator with mixed_precision="bf16" on
   the CPU, torchdistill's own route to mixed precision (the student's forward under bf16 autocast).
Each side is one process timed end to end (start, data, training, test evaluation); both report their training
loop's seconds too. Distillery runs before, between and after the torchdistill runs, so the shared machine's drift
shows in the spread of its runs. Results: benchmarks/results/torchdistill.{json,md}.
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
from distill.provenance import git_sha, machine
from distillery.benchmark import command, parser, write_result
from distillery.metrics import read_metrics
from distillery.run_folder import METRICS

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "benchmarks" / ".venv-torchdistill"
TORCHDISTILL = "torchdistill==1.1.5"
ACCELERATE = "accelerate==1.15.0"
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]  # the project's own torch build, from this machine's wheels
CONFIG = REPO / "benchmarks" / "torchdistill" / "mnist_kd.yaml"


def ensure_torchdistill_env() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if subprocess.run([str(python), "-c", "import torchdistill, accelerate, distill"], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TORCH, TORCHDISTILL, ACCELERATE], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], check=True)
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
    arguments.add_argument("--their-precisions", nargs="+", default=["no", "bf16"], choices=["no", "bf16"],
                           help="torchdistill's runs: no (fp32, its default) and bf16 (accelerate's mixed precision)")
    arguments.add_argument("--work", default="runs/torchdistill_bench", help="scratch folder of both sides' runs")
    args = arguments.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    python = ensure_torchdistill_env()
    teacher = Path(args.teacher) if args.teacher else train_teacher(work, args.data_root, args.teacher_epochs)

    def ours() -> dict:
        out = work / f"ours_{time.strftime('%Y%m%d-%H%M%S')}"
        with tempfile.TemporaryDirectory() as cache:
            wall = timed(distillery("--out", str(out), "--data-root", args.data_root, "--set",
                                    f"teacher.checkpoint={teacher}", "--set", "baseline.enabled=false", "--set",
                                    f"student.train.epochs={args.epochs}"), env={"DISTILLERY_CACHE": cache})
        student = read_metrics(out / METRICS).models["student"]
        return {"wall_seconds": wall, "train_seconds": student.train_seconds, "test_errors": student.errors,
                "precision": student.precision}

    def theirs(precision: str) -> dict:
        result = work / f"torchdistill_{precision}.json"
        wall = timed([str(python), str(REPO / "benchmarks" / "torchdistill" / "run_kd.py"), "--config", str(CONFIG),
                      "--teacher", str(teacher), "--data-root", args.data_root, "--epochs", str(args.epochs),
                      "--mixed-precision", precision, "--result", str(result)])
        measured = json.loads(result.read_text())
        return {"wall_seconds": wall, "train_seconds": measured["train_seconds"], "test_errors": measured["errors"],
                "mixed_precision": precision, "version": measured["torchdistill"], "torch": measured["torch"]}

    # Ours on both sides of each of theirs: the machine's drift shows as the spread of our runs.
    our_runs, their_runs = [ours()], []
    for precision in args.their_precisions:
        their_runs.append(theirs(precision))
        our_runs.append(ours())
    mean = {key: sum(run[key] for run in our_runs) / len(our_runs) for key in ("wall_seconds", "train_seconds")}
    record = {
        "setting": f"MNIST, 1200-1200 teacher ({teacher_epochs(teacher)} epochs, fp32) -> 800-800 "
                   f"student, {args.epochs} epochs, batch 128, SGD Nesterov 0.9, one-cycle lr 0.05, T = 20, "
                   "soft term only (weight T^2), CPU",
        "order": "Distillery, then each torchdistill run followed by Distillery; Distillery's times are the mean of "
                 "its runs",
        "teacher_errors": read_metrics(work / "teacher" / METRICS).models["teacher"].errors if not args.teacher
        else None,
        "distillery": {**mean, "runs": our_runs},
        "torchdistill": their_runs,
        "speedup_wall": {run["mixed_precision"]: run["wall_seconds"] / mean["wall_seconds"] for run in their_runs},
        "speedup_train_loop": {run["mixed_precision"]: run["train_seconds"] / mean["train_seconds"]
                               for run in their_runs},
    }
    write_result(args.out, "torchdistill", record, markdown)
    print(markdown({**record, "command": command(), "git_sha": git_sha(), "machine": machine()}))


def markdown(record: dict) -> str:
    ours = record["distillery"]
    runs = ", ".join(f"{run['wall_seconds']:.1f}" for run in ours["runs"])
    precisions = ", ".join(sorted({run["precision"] for run in ours["runs"]}))
    lines = [f"Setting: {record['setting']}; teacher {record['teacher_errors']} test errors. Order: {record['order']}.",
             "", "| | wall time (s) | training loop (s) | student test errors | wall time / Distillery's |",
             "|---|---|---|---|---|",
             f"| Distillery, precision auto -> {precisions} (mean of {runs} s) | {ours['wall_seconds']:.1f} | "
             f"{ours['train_seconds']:.1f} | {', '.join(str(run['test_errors']) for run in ours['runs'])} | 1 |"]
    for run in record["torchdistill"]:
        how = "its default, fp32" if run["mixed_precision"] == "no" else "accelerate, mixed precision bf16"
        lines.append(f"| torchdistill {run['version']} ({how}) | {run['wall_seconds']:.1f} | {run['train_seconds']:.1f} "
                     f"| {run['test_errors']} | {record['speedup_wall'][run['mixed_precision']]:.2f}x |")
    lines += ["", f"Command: `{record['command']}`; git {record['git_sha']}; {record['machine']}; torch "
              f"{record['torchdistill'][0]['torch']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
