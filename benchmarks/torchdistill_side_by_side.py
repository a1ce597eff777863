"""Distillery against torchdistill on the same MNIST distillation, measured side by side in one run.

    python benchmarks/torchdistill_side_by_side.py --data-root ../shared/datasets
        [--teacher-epochs 20] [--epochs 60] [--work runs/torchdistill_bench] [--out benchmarks/results]

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
loop's seconds too. Distillery runs before and after torchdistill, so the shared machine's drift shows in the gap
between its two runs. Results: benchmarks/results/torchdistill.{json,md}.
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

    def theirs() -> dict:
        result = work / "torchdistill.json"
        wall = timed([str(python), str(REPO / "benchmarks" / "torchdistill" / "run_kd.py"), "--config", str(CONFIG),
                      "--teacher", str(teacher), "--data-root", args.data_root, "--epochs", str(args.epochs),
                      "--result", str(result)])
        measured = json.loads(result.read_text())
        return {"wall_seconds": wall, "train_seconds": measured["train_seconds"], "test_errors": measured["errors"],
                "version": measured["torchdistill"], "torch": measured["torch"]}

    our_runs = [ours()]  # ours on both sides of theirs: the machine's drift shows as the gap between the two
    their_run = theirs()
    our_runs.append(ours())
    mean = {key: sum(run[key] for run in our_runs) / len(our_runs) for key in ("wall_seconds", "train_seconds")}
    record = {
        "setting": f"MNIST, 1200-1200 teacher ({teacher_epochs(teacher)} epochs, fp32) -> 800-800 "
                   f"student, {args.epochs} epochs, batch 128, SGD Nesterov 0.9, one-cycle lr 0.05, T = 20, "
                   "soft term only (weight T^2), CPU",
        "order": "Distillery, torchdistill, Distillery; Distillery's times are the mean of its two runs",
        "teacher_errors": read_metrics(work / "teacher" / METRICS).models["teacher"].errors if not args.teacher
        else None,
        "distillery": {**mean, "runs": our_runs},
        "torchdistill": their_run,
        "speedup_wall": their_run["wall_seconds"] / mean["wall_seconds"],
        "speedup_train_loop": their_run["train_seconds"] / mean["train_seconds"],
    }
    write_result(args.out, "torchdistill", record, markdown)
    print(markdown({**record, "command": command(), "git_sha": git_sha(), "machine": machine()}))


def markdown(record: dict) -> str:
    ours, theirs = record["distillery"], record["torchdistill"]
    first, second = ours["runs"]
    precisions = ", ".join(sorted({run["precision"] for run in ours["runs"]}))
    return "\n".join([
        f"Setting: {record['setting']}; teacher {record['teacher_errors']} test errors. Order: {record['order']}.",
        "", "| | wall time (s) | training loop (s) | student test errors |", "|---|---|---|---|",
        f"| Distillery, precision auto ({precisions}; mean of {first['wall_seconds']:.1f} and "
        f"{second['wall_seconds']:.1f} s) | {ours['wall_seconds']:.1f} | {ours['train_seconds']:.1f} | "
        f"{first['test_errors']}, {second['test_errors']} |",
        f"| torchdistill {theirs['version']} (fp32, as its users run it) | {theirs['wall_seconds']:.1f} | "
        f"{theirs['train_seconds']:.1f} | {theirs['test_errors']} |",
        f"| ratio (torchdistill / Distillery) | {record['speedup_wall']:.2f}x | {record['speedup_train_loop']:.2f}x | |",
        "", f"Command: `{record['command']}`; git {record['git_sha']}; {record['machine']}; torch {theirs['torch']}.",
        ""])


if __name__ == "__main__":
    main()
