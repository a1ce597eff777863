"""The `distillery` command. User mistakes end in one line on stderr and exit code 2, never a stack trace."""

from __future__ import annotations

import argparse
import errno
import logging
import shlex
import sys
import time
from pathlib import Path

from distill.errors import ConfigError, DistilleryError
from distillery import DEMO_CONFIG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description="Distil teachers into one small student.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the teacher, distil the student, evaluate, report")
    run.add_argument("config", nargs="?", help="YAML config (default: configs/demo.yaml, a generalist and three "
                                              "specialists on scikit-learn's digits)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set student.loss.temperature=20 (repeatable)")
    run.add_argument("--out", help="run folder (default: runs/<UTC time>)")
    run.add_argument("--data-root", help="data root (default: $DISTILLERY_DATA, else the per-user cache)")
    run.add_argument("--download", action="store_true", help="allow downloading a missing data set")
    run.add_argument("--address", help="join this Ray cluster ('auto' or HOST:PORT) instead of starting a local one")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out: reuse finished stages whose inputs are unchanged, resume "
                          "unfinished models from their last epoch, rerun the rest")
    run.add_argument("--verbose", "-v", action="store_true", help="log every epoch")
    sweep = commands.add_parser("sweep", help="a study: the runs of a grid of settings times several seeds, on Ray, "
                                              "then their comparison")
    sweep.add_argument("config", nargs="?", help="YAML config every run starts from (default: the demo)")
    sweep.add_argument("--seeds", help="N (seeds 0..N-1) or a list such as 0,3,7; optional with --resume")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=[V1, V2, ...]",
                       help="a config key and the values to try, e.g. --grid student.loss.temperature=[2,4] "
                            "(repeatable: the runs are every combination)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key in every run (repeatable)")
    sweep.add_argument("--out", required=True, help="the study folder: study.json, study.md, one run folder per run")
    sweep.add_argument("--resume", action="store_true",
                       help="continue the study in --out: keep its finished runs, resume the others")
    sweep.add_argument("--address", help="join this Ray cluster ('auto' or HOST:PORT) instead of starting a local "
                                         "one")
    sweep.add_argument("--data-root", help="data root (default: $DISTILLERY_DATA, else the per-user cache)")
    sweep.add_argument("--download", action="store_true", help="allow downloading a missing data set")
    compare = commands.add_parser("compare", help="compare finished runs: mean ± sd per setting, paired "
                                                  "differences with 95 %% intervals")
    compare.add_argument("dirs", nargs="+", metavar="DIR", help="a study folder, or run folders")
    compare.add_argument("--out", help="where study.md and study.json go (default: the study folder, when one "
                                       "study is compared)")
    report = commands.add_parser("report", help="rebuild report.md and its figures from a finished run folder")
    report.add_argument("run_dir", metavar="DIR", help="a run folder holding config.yaml and metrics.json")
    return parser


def command_run(args: argparse.Namespace) -> int:
    from distill.config import load_config
    from distill.data import resolve_data_root
    from distillery.pipeline import run

    config = load_config(args.config or DEMO_CONFIG, args.overrides)
    data_root = resolve_data_root(args.data_root)
    out_dir = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    args.out = str(out_dir)  # so that an interrupted run can say how to continue it
    if out_dir.exists() and not out_dir.is_dir():
        raise DistilleryError(f"--out {out_dir} is a file, not a folder")
    metrics = run(config, out_dir, data_root, args.download, progress=sys.stderr.isatty(), address=args.address,
                  resume=args.resume)
    for name, model in metrics.models.items():
        print(f"{name:>20}: accuracy {model.accuracy:.4f}, errors {model.errors}" +
              (f" ({model.precision})" if model.precision else ""))
    print(f"report: {out_dir / 'report.md'}")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from distill.config import load_config
    from distillery.metrics import read_metrics
    from distillery.report import report_manifest, write_report
    from distillery.run_folder import CONFIG, METRICS

    run_dir = Path(args.run_dir)
    for name in (CONFIG, METRICS):
        if not (run_dir / name).is_file():
            raise DistilleryError(f"{run_dir} holds no finished run: {name} is missing")
    config = load_config(run_dir / CONFIG)
    written = write_report(run_dir, config, read_metrics(run_dir / METRICS))
    report_manifest(run_dir, config).seal(written)  # so a later --resume knows this report is current
    print(f"report: {written[0]}")
    return 0


def command_sweep(args: argparse.Namespace) -> int:
    from distill.data import resolve_data_root
    from distillery.study import StudyDefinition, parse_grid, parse_seeds
    from distillery.sweep import sweep

    study_dir = Path(args.out)
    if args.seeds is None:
        if not args.resume:
            raise ConfigError("sweep needs --seeds (a count N, or a list such as 0,3,7)")
        definition = _saved_definition(study_dir)
    else:
        definition = StudyDefinition(args.config, args.overrides, parse_grid(args.grid), parse_seeds(args.seeds))
    study = sweep(definition, study_dir, resolve_data_root(args.data_root), args.download, args.address,
                  args.resume)
    failed = [run for run in study.runs if run.status == "failed"]
    print(f"{len(study.runs) - len(failed)} of {len(study.runs)} runs finished" +
          "".join(f"\nfailed: {run.folder}: {run.error}" for run in failed))
    if study.comparison is not None:
        print(f"study: {study_dir / 'study.md'}")
    return 1 if failed else 0


def _saved_definition(study_dir: Path):
    from distillery.study import STUDY, read_study

    if not (study_dir / STUDY).is_file():
        raise ConfigError(f"--resume without --seeds continues a study, but {study_dir} holds none")
    definition = read_study(study_dir).definition
    if definition is None:
        raise ConfigError(f"{study_dir / STUDY} records a comparison, not a sweep: there is nothing to resume")
    return definition


def command_compare(args: argparse.Namespace) -> int:
    from distillery.compare import compare

    written = compare([Path(d) for d in args.dirs], Path(args.out) if args.out else None)
    print(f"study: {written}")
    return 0


COMMANDS = {"run": command_run, "sweep": command_sweep, "compare": command_compare, "report": command_report}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except DistilleryError as error:
        print(f"distillery: error: {_printable(str(error))}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the machine's, not the input's: a full disk, a folder that went away
        print(f"distillery: error: {error.filename or 'a file'}: {_os_problem(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("distillery: interrupted" + _resume_hint(args, argv), file=sys.stderr)
        return 130



def _os_problem(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the device: free some, then continue with the same command and --resume"
    return error.strerror or str(error)


def _resume_hint(args: argparse.Namespace, argv: list[str] | None) -> str:
    """How to continue an interrupted run or study: its own command line, with --out and --resume."""
    if args.command not in ("run", "sweep") or args.out is None:
        return ""
    words = list(sys.argv[1:] if argv is None else argv)
    if not any(word == "--out" or word.startswith("--out=") for word in words):
        words += ["--out", args.out]
    if "--resume" not in words:
        words.append("--resume")
    return "; continue with: distillery " + shlex.join(words)


def _printable(text: str) -> str:
    """One line whatever the input held: a key or value with a line break or a control character is escaped."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
