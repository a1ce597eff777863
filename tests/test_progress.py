"""Progress on the driver: stages announced, jobs' epochs, running and retried jobs read from their logs."""

from distill.config import load_config
from distill.storage import append_json_line
from distillery.pipeline import run
from distillery.progress import progress_line
from ensembles.jobs import JobResult, JobStatus, LogFollower, job_status, log_path


def _log(run_dir, name, events):
    for event in events:
        append_json_line(log_path(run_dir, name), event)


def test_job_status_replays_the_log_and_counts_attempts_since_a_time(tmp_path):
    _log(tmp_path, "member_0", [{"event": "start", "epoch": 0, "time": 1}, {"event": "epoch", "epoch": 1, "time": 2},
                                {"event": "epoch", "epoch": 2, "time": 3}, {"event": "resume", "epoch": 2, "time": 4},
                                {"event": "epoch", "epoch": 3, "time": 5}])
    _log(tmp_path, "member_1", [{"event": "reused", "epoch": 12, "time": 1}])
    # Finished in an earlier run, then found stale (its teacher changed) and trained again from scratch.
    _log(tmp_path, "member_2", [{"event": "start", "epoch": 0, "time": 1}, {"event": "epoch", "epoch": 12, "time": 2},
                                {"event": "stale", "time": 10}, {"event": "start", "epoch": 0, "time": 10},
                                {"event": "epoch", "epoch": 1, "time": 11}])
    assert job_status(tmp_path, "member_0") == JobStatus(epochs=3, attempts=2)
    assert job_status(tmp_path, "member_0", since=4) == JobStatus(epochs=3, attempts=1)
    assert job_status(tmp_path, "member_1") == JobStatus(epochs=12, attempts=0)
    assert job_status(tmp_path, "member_2", since=10) == JobStatus(epochs=1, attempts=1)
    assert job_status(tmp_path, "member_3") == JobStatus()


def test_the_log_follower_reads_what_each_log_gained_and_agrees_with_a_replay(tmp_path):
    follower = LogFollower(tmp_path, ["member_0", "member_1"], since=3)
    assert follower.statuses() == {"member_0": JobStatus(), "member_1": JobStatus()}  # no log yet
    _log(tmp_path, "member_0", [{"event": "start", "epoch": 0, "time": 1}, {"event": "epoch", "epoch": 1, "time": 2}])
    assert follower.statuses()["member_0"] == JobStatus(epochs=1, attempts=0)
    path = log_path(tmp_path, "member_0")
    with open(path, "ab") as log_file:
        log_file.write(b'{"event": "epoch", "epo')  # a line being written: not taken yet
    assert follower.statuses()["member_0"] == JobStatus(epochs=1, attempts=0)
    with open(path, "ab") as log_file:
        log_file.write(b'ch": 2, "time": 3}\n{"event": "epoch", "ep')  # finished; then a line a crash cut short
    assert follower.statuses()["member_0"] == JobStatus(epochs=2, attempts=0)
    _log(tmp_path, "member_0", [{"event": "resume", "epoch": 2, "time": 4}])  # closes the cut line first
    _log(tmp_path, "member_1", [{"event": "reused", "epoch": 12, "time": 5}])
    assert follower.statuses() == {"member_0": job_status(tmp_path, "member_0", since=3),
                                   "member_1": job_status(tmp_path, "member_1", since=3)}
    assert follower.statuses()["member_0"] == JobStatus(epochs=2, attempts=1)
    assert follower.offsets["member_0"] == path.stat().st_size  # everything read once, nothing twice


def test_progress_line_names_running_and_retried_jobs():
    statuses = {"member_0": JobStatus(3, 2), "member_1": JobStatus(12, 1), "member_2": JobStatus(),
                **{f"member_{i}": JobStatus(1, 1) for i in range(3, 8)}}
    finished = {"member_1": JobResult("member_1", "c", [], 1.0, "fp32")}
    line = progress_line(statuses, finished)
    assert line == "1/8 done, running member_0@3 member_3@1 member_4@1 member_5@1 +2, retried member_0"


def test_a_run_on_a_terminal_announces_its_stages(tmp_path, capsys):
    config = load_config(None, ["data.name=synthetic", "data.options={classes: 12, groups: 3, dim: 8, "
                                "train_per_class: 20, test_per_class: 5}", "teacher.model.kwargs={hidden: [16]}",
                                "teacher.train.epochs=2", "specialists.count=2", "specialists.train.epochs=1",
                                "student.model.kwargs={hidden: [8]}", "student.train.epochs=1",
                                "cluster.executor=local"])
    run(config, tmp_path / "run", tmp_path, progress=True)
    err = capsys.readouterr().err
    stages = [line.removeprefix("distillery: ") for line in err.splitlines() if line.startswith("distillery: ")]
    assert stages == ["teachers", "clustering", "specialists", "soft targets", "student", "baseline",
                      "evaluation and report"]
    assert "specialists: 100%" in err and "3/3 done" in err  # two specialists and the compute-matched control
