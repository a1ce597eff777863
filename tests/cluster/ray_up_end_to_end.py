"""`ray up` end to end on this machine: three hosts made of namespaces (tests/cluster/hosts.sh), the repository's
cluster.yaml filled in for them, the real launcher, a run submitted as a Ray job whose members spread over the
hosts while its run folder is on the head only (no shared storage), one worker host killed mid-run, the results
read back on the head, `ray down`, and everything removed.

    sudo python tests/cluster/ray_up_end_to_end.py [--work /var/tmp/distillery-ray-up] [--keep]

It prints one line per step and ends with "passed" (exit 0) or the step that failed (exit 1). Traffic stays on
the bridge and the namespaces the script creates. The hosts have no network beyond the bridge, so their setup
commands install the project on top of this machine's packages (a venv that sees them) instead of from PyPI: the
rest of cluster.yaml (file mounts, start commands, node types) is used as shipped, with the hosts' addresses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")  # this Python's Ray command line
HOSTS_SH = Path(__file__).resolve().parent / "hosts.sh"
HEAD, WORKERS = "10.77.0.1", ["10.77.0.2", "10.77.0.3"]
VICTIM = 3  # the host killed mid-run (10.77.0.3)
DASHBOARD_PORT = 18265  # the tunnel's local end: not 8265, which a local Ray instance may hold
HEAD_RAY = "RAY_ADDRESS=http://127.0.0.1:8265 ~/venv/bin/ray"  # the head's Ray command line, at its dashboard
OUT = "/root/runs/ensemble"  # on the head: each host has its own /root, so no worker sees this folder
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")  # a job's final states (an unanswered question is not one)
MEMBERS = 6
# Members long enough to kill a host while some train on it; each takes a whole 2-CPU host.
RUN = ["data.name=digits", f"ensemble.size={MEMBERS}", "teacher.model.kwargs={hidden: [256, 256]}",
       "teacher.train={epochs: 60, batch_size: 16, lr: 0.05}", "student.model.kwargs={hidden: [64]}",
       "student.train={epochs: 30, batch_size: 16}", "specialists.count=0",
       "cluster.num_cpus=2", "cluster.max_retries=3"]


def step(message: str) -> None:
    print(f"[ray-up] {message}", flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, text=True, **kwargs)


def cluster_config(work: Path) -> Path:
    """The repository's cluster.yaml with the hosts' addresses, the test key, and a setup that installs the
    project into a venv seeing this machine's packages (no network in the hosts)."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["provider"].update(head_ip=HEAD, worker_ips=WORKERS)
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(work / "key")}
    config["min_workers"] = config["max_workers"] = len(WORKERS)
    site = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    config["setup_commands"] = [
        f"{sys._base_executable} -m venv --without-pip ~/venv",
        f"echo {site} > ~/venv/lib/{version}/site-packages/machine.pth",
        "~/venv/bin/python -m pip install -q --no-deps --no-build-isolation --no-index -e ~/distillery",
        # The `ray` command of the node's own Python, and that Python first on every login's PATH.
        "printf '#!/root/venv/bin/python\\nfrom ray.scripts.scripts import main\\nmain()\\n' > ~/venv/bin/ray",
        "chmod +x ~/venv/bin/ray",
        "grep -q venv/bin ~/.bashrc 2>/dev/null || echo 'export PATH=$HOME/venv/bin:$PATH' >> ~/.bashrc",
    ]
    # Each host is told its own address (with no default route Ray cannot find one) and its CPU count.
    config["head_start_ray_commands"] = [command.replace("ray start --head", f"ray start --head "
                                                         f"--node-ip-address={HEAD} --num-cpus=2")
                                         for command in config["head_start_ray_commands"]]
    config["worker_start_ray_commands"] = [
        command.replace("ray start --address=$RAY_HEAD_IP:6379",
                        "ray start --address=$RAY_HEAD_IP:6379 --node-ip-address=$(hostname -I | cut -d' ' -f1) "
                        "--num-cpus=2")
        for command in config["worker_start_ray_commands"]]
    path = work / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ssh(work: Path, host: str, command: str) -> str:
    return run(["ssh", "-q", "-i", str(work / "key"), "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", f"root@{host}", command],
               capture_output=True).stdout


# Run on the head: each member's log events and whether it finished, read from the run folder only the head sees.
MEMBER_STATUS = """
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def events(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
print(json.dumps({path.stem: {"events": events(path), "finished": (out / (path.stem + ".pt.sha256")).is_file()}
                  for path in sorted((out / "logs").glob("member_*.jsonl"))}))
"""


def members_on_head(work: Path) -> dict[str, dict]:
    return json.loads(ssh(work, HEAD, f"~/venv/bin/python -c {shlex.quote(MEMBER_STATUS)} {OUT}"))


def node_of_host(work: Path, host: str) -> str:
    """The Ray node id of the node whose address is `host`."""
    script = ("import ray, json; ray.init(address='auto', logging_level='ERROR'); "
              "print(json.dumps({n['NodeManagerAddress']: n['NodeID'] for n in ray.nodes() if n['Alive']}))")
    return json.loads(ssh(work, HEAD, f"~/venv/bin/python -c {shlex.quote(script)}").splitlines()[-1])[host]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/distillery-ray-up"))
    parser.add_argument("--keep", action="store_true", help="leave the hosts up at the end (to look around)")
    args = parser.parse_args()
    work = args.work
    env = {**os.environ, "HOST_SHARED_PATHS": _under_root(Path(sys.base_prefix))}
    if work.exists():
        subprocess.run(["bash", str(HOSTS_SH), "down", str(work)], check=False)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tunnel = config = None
    try:
        step("starting three hosts in namespaces")
        run(["bash", str(HOSTS_SH), "up", str(work)], env=env)
        config = cluster_config(work)
        step("ray up (head 10.77.0.1; the head's autoscaler starts 10.77.0.2 and 10.77.0.3)")
        run([RAY, "up", "-y", "--no-config-cache", str(config)], cwd=REPO, stdout=open(work / "ray_up.log", "w"),
            stderr=subprocess.STDOUT, env={**os.environ, "RAY_UP_enable_autoscaler_v2": "0"})
        wait_for_nodes(work, 3)
        step("3 nodes alive; tunnelling the head's dashboard")
        tunnel = subprocess.Popen([RAY, "dashboard", "--port", str(DASHBOARD_PORT), str(config)], cwd=REPO,
                                  stdout=open(work / "tunnel.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        wait_for_dashboard()
        # Submitted without following its logs: a follow rides the tunnel, which a host starved of CPU can drop
        # while the job goes on; the job's status is asked on the head itself.
        submitted = run([RAY, "job", "submit", "--no-wait", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}",
                         "--working-dir", str(REPO), "--", "distillery", "run", "--address", "auto", "--out", OUT,
                         *[arg for override in RUN for arg in ("--set", override)]],
                        cwd=REPO, capture_output=True).stdout
        job_id = re.search(r"raysubmit_\w+", submitted).group(0)
        victim_host = WORKERS[VICTIM - 2]
        victim_node = None
        deadline = time.monotonic() + 600
        while True:  # until a member trains on the victim host, after at least one member finished
            time.sleep(1)
            assert job_status(work, job_id) not in ENDED, f"the job ended before a member trained on {victim_host}"
            assert time.monotonic() < deadline, "timed out waiting for members on every host"
            victim_node = victim_node or _try(lambda: node_of_host(work, victim_host))
            members = _try(lambda: members_on_head(work)) or {}
            running = [name for name, member in members.items() if not member["finished"]
                       and any(e["event"] == "epoch" and e.get("node") == victim_node for e in member["events"])]
            finished_before = {name for name, member in members.items() if member["finished"]}
            if running and finished_before:
                break
        step(f"killing host {victim_host} while {', '.join(running)} {'train' if len(running) > 1 else 'trains'} there "
             f"({len(finished_before)} members finished)")
        run(["bash", str(HOSTS_SH), "kill", str(work), str(VICTIM)])
        deadline = time.monotonic() + 900
        while (status := job_status(work, job_id)) not in ENDED and time.monotonic() < deadline:
            time.sleep(2)
        (work / "job.log").write_text(_try(lambda: ssh(work, HEAD, f"{HEAD_RAY} job logs {job_id}")) or "")
        assert status == "SUCCEEDED", f"the job ended {status}: see job.log"
        step(f"the job finished; reading the results from {OUT} on the head")
        metrics = json.loads(ssh(work, HEAD, f"cat {OUT}/metrics.json"))
        members = members_on_head(work)
        nodes = {e.get("node") for member in members.values() for e in member["events"]} - {None}
        assert len(nodes) == 3, f"members ran on {len(nodes)} nodes, not 3"
        for name in finished_before:
            starts = [e for e in members[name]["events"] if e["event"] in ("start", "resume")]
            assert len(starts) == 1, f"{name} finished before the kill but was trained again"
        for name in running:
            events = [e["event"] for e in members[name]["events"]]
            assert "resume" in events, f"{name} did not resume after its host died: {events}"
        assert "student" in metrics["models"] and ssh(work, HEAD, f"test -f {OUT}/report.md && echo yes").strip()
        absent = ssh(work, WORKERS[0], f"test -e {OUT} && echo present || echo absent").strip()
        assert absent == "absent", "a worker host sees the run folder: the test would not show shipping"
        step(f"members on 3 nodes, none of which but the head sees {OUT}; {', '.join(running)} resumed on another "
             f"node; ensemble accuracy {metrics['models']['ensemble']['accuracy']:.4f}, "
             f"student {metrics['models']['student']['accuracy']:.4f}")
    finally:
        if tunnel is not None:
            os.killpg(tunnel.pid, signal.SIGTERM)
        if config is not None and not args.keep:
            step("ray down")
            subprocess.run([RAY, "down", "-y", str(config)], cwd=REPO, stdout=open(work / "ray_down.log", "w"),
                           stderr=subprocess.STDOUT, timeout=300, check=False)
        if not args.keep:
            subprocess.run(["bash", str(HOSTS_SH), "down", str(work)], check=False)
            left = [name for name in run(["ip", "netns", "list"], capture_output=True).stdout.split()
                    if name.startswith("dist-host")]
            assert not left, f"namespaces left behind: {left}"
            step("hosts, namespaces and bridge removed")
    if not args.keep:
        shutil.rmtree(work)  # on failure it stays, with the logs of each step
    step("passed")
    return 0


def wait_for_nodes(work: Path, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    script = ("import ray; ray.init(address='auto', logging_level='ERROR'); "
              "print(sum(n['Alive'] for n in ray.nodes()))")
    while time.monotonic() < deadline:
        alive = _try(lambda: int(ssh(work, HEAD, f"~/venv/bin/python -c {shlex.quote(script)}").splitlines()[-1]))
        if alive == count:
            return
        time.sleep(3)
    raise AssertionError(f"fewer than {count} Ray nodes came up: see ray_up.log and the head's "
                         "/tmp/ray/session_latest/logs/monitor.*")


def job_status(work: Path, job_id: str) -> str | None:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED, asked of the head's own dashboard; None if it did not say."""
    script = ("from ray.job_submission import JobSubmissionClient; "
              f"print(JobSubmissionClient('http://127.0.0.1:8265').get_job_status('{job_id}').value)")
    answer = _try(lambda: ssh(work, HEAD, f"~/venv/bin/python -c {shlex.quote(script)}")) or ""
    return answer.strip().splitlines()[-1] if answer.strip() else None


def wait_for_dashboard(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{DASHBOARD_PORT}/api/version", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the head's dashboard did not answer through `ray dashboard`: see tunnel.log")


def _try(function):
    try:
        return function()
    except (subprocess.CalledProcessError, ValueError, KeyError, IndexError):
        return None


def _under_root(path: Path) -> str:
    """`path` when the hosts would not see it (it lies under /root, which each host has its own of)."""
    return str(path) if path.is_relative_to("/root") else ""


if __name__ == "__main__":
    sys.exit(main())
