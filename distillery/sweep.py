"""`distillery sweep`: every run of a study (distillery.study) as one Ray task, then their comparison.

Why whole runs as tasks: a study is many small pipelines, each mostly a chain of models that wait for each other
(teacher, soft targets, student). Run one after another, each pipeline leaves cores idle between and inside its
stages and pays Ray's start-up again; as tasks on one Ray connection they keep every CPU busy, each training its
models in its own process on the CPUs its task holds (`pipeline.run(fan_out=False)`). A run folder is a normal
run folder, so a run whose worker died is retried by Ray and resumes from its last epoch, and `--resume` after
the driver died reuses the finished runs and continues the others.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import ray
import torch

from distill.config import RunConfig
from distill.errors import ConfigError, DistilleryError
from distillery.comparison import compare_runs
from distillery.pipeline import run
from distillery.run_folder import METRICS, make_folder
from distillery.study import (STUDY, STUDY_VERSION, Study, StudyDefinition, StudyPoint, read_study,
                              study_points, write_study)
from distillery.study_report import write_study_report
from ensembles.fanout import task_resources, task_result
from ensembles.ray_connection import ray_session


def sweep(definition: StudyDefinition, study_dir: Path, data_root: Path, download: bool = False,
          address: str | None = None, resume: bool = False) -> Study:
    """Run every point of the study not finished yet, record each run's end in study.json, and compare the finished
    ones into study.json and study.md. Every point's config is checked before anything is written."""
    study_dir = Path(study_dir)
    points = study_points(definition)
    study = _open_study(study_dir, definition, points, resume)
    to_run = [point for point, run in zip(points, study.runs) if run.status != "finished"]
    if to_run:
        with ray_session(address):
            _run_on_ray(study_dir, study, to_run, data_root, download)
    finished = [study_dir / run.folder for run in study.runs if run.status == "finished"]
    if finished:
        study.comparison = compare_runs(finished, study_dir)
        write_study(study_dir, study)
        write_study_report(study_dir, study)
    return study


def _open_study(study_dir: Path, definition: StudyDefinition, points: list[StudyPoint], resume: bool) -> Study:
    """study.json, written before any run starts: a new study, or with `resume` the saved one, whose runs keep
    their status when their metrics.json is still there."""
    study = Study(STUDY_VERSION, definition, [point.run for point in points])
    if (study_dir / STUDY).is_file():
        if not resume:
            raise ConfigError(f"{study_dir} already holds a study: pass --resume to continue it, or choose another "
                              "--out")
        saved = read_study(study_dir)
        if saved.definition != definition:
            raise ConfigError(f"--resume: {study_dir} holds another study ({saved.definition}); rerun its command "
                              "or choose another --out")
        for run, old in zip(study.runs, saved.runs):
            if old.status == "finished" and (study_dir / old.folder / METRICS).is_file():
                run.status, run.seconds = old.status, old.seconds
    elif study_dir.is_dir() and any(study_dir.iterdir()):
        raise ConfigError(f"{study_dir} is not empty and holds no study: choose another --out")
    make_folder(study_dir)
    write_study(study_dir, study)
    return study


def _run_on_ray(study_dir: Path, study: Study, points: list[StudyPoint], data_root: Path, download: bool) -> None:
    cluster = points[0].config.cluster
    num_cpus, num_gpus = task_resources(cluster, len(points))
    task = ray.remote(_run_point).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=cluster.max_retries,
                                          retry_exceptions=False)
    pending = {task.remote(point.config, str(study_dir / point.run.folder), str(data_root), download, num_cpus):
               point.run for point in points}
    print(f"study {study_dir}: {len(points)} of {len(study.runs)} runs to make, {num_cpus:g} CPU(s) each",
          file=sys.stderr)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        run = pending.pop(done[0])
        try:
            run.seconds, run.status = task_result(done[0], run.folder, cluster.max_retries), "finished"
        except DistilleryError as error:
            run.status, run.error = "failed", str(error)
        write_study(study_dir, study)
        ended = sum(r.status != "pending" for r in study.runs)
        print(f"[{ended}/{len(study.runs)}] {run.folder}: {run.status}" + (f": {run.error}" if run.error else ""),
              file=sys.stderr)


def _run_point(config: RunConfig, out_dir: str, data_root: str, download: bool, num_cpus: float) -> float:
    """One run of the study on its Ray worker: the whole pipeline, its models one after another on this task's
    CPUs; resumes whatever an earlier attempt left in the run folder. Returns its seconds."""
    torch.set_num_threads(max(1, math.floor(num_cpus)))
    started = time.perf_counter()
    run(config, Path(out_dir), Path(data_root), download, resume=True, fan_out=False)
    return time.perf_counter() - started
