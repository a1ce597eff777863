"""`distillery compare`: the finished runs of studies or run folders compared (distillery.comparison), written as
study.json and study.md."""

from __future__ import annotations

from pathlib import Path

from distill.errors import ConfigError
from distillery.comparison import compare_runs
from distillery.run_folder import METRICS
from distillery.study import STUDY, STUDY_VERSION, Study, StudyRun, read_study, write_study
from distillery.study_report import write_study_report


def compare(dirs: list[Path], out: Path | None) -> Path:
    """Compare the finished runs in `dirs` (study folders or run folders); returns the study.md written into `out`,
    which defaults to the study folder when `dirs` is one study."""
    studies = {d: read_study(d) for d in dirs if (d / STUDY).is_file()}
    for folder in dirs:
        if folder not in studies and not (folder / METRICS).is_file():
            raise ConfigError(f"{folder} is neither a study (no {STUDY}) nor a finished run (no {METRICS})")
    if out is None:
        if len(dirs) != 1 or not studies:
            raise ConfigError("compare: pass --out for study.md unless you compare one study folder")
        out = dirs[0]
    if list(studies) == [out]:
        study = studies[out]
        folders = [out / run.folder for run in study.runs if run.status == "finished"]
    else:
        folders = [folder / run.folder for folder, study in studies.items() for run in study.runs
                   if run.status == "finished"] + [folder for folder in dirs if folder not in studies]
        study = Study(STUDY_VERSION, None, [])
    if not folders:
        raise ConfigError(f"compare: no finished run in {', '.join(map(str, dirs))}")
    study.comparison = compare_runs(folders, out)
    if study.definition is None:
        study.runs = [StudyRun(folder, setting.settings, seed, "finished") for setting in study.comparison.settings
                      for folder, seed in zip(setting.runs, setting.seeds)]
    write_study(out, study)
    return write_study_report(out, study)
