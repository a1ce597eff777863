"""`ray up` end to end on hosts made of namespaces: tests/cluster/ray_up_end_to_end.py, run as CI runs it."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "cluster" / "ray_up_end_to_end.py"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces and an SSH server per host need root"
    needed = {"sshd": Path("/usr/sbin/sshd"), "ip": shutil.which("ip"), "unshare": shutil.which("unshare"),
              "rsync": shutil.which("rsync")}
    absent = [name for name, path in needed.items() if not path or not Path(path).exists()]
    return f"missing {', '.join(absent)} (.ci/run installs openssh-server and rsync)" if absent else None


@pytest.mark.slow
@pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
def test_ray_up_job_submit_node_loss_and_ray_down_on_namespaced_hosts():
    # Not under /tmp: each host has its own /tmp, and the run folder here must be the same folder on all of them.
    work = Path(tempfile.mkdtemp(prefix="distillery-ray-up-", dir="/var/tmp")) / "cluster"
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    result = subprocess.run([sys.executable, str(SCRIPT), "--work", str(work)], capture_output=True, text=True,
                            timeout=1800, env={**os.environ, "PATH": path})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "members on 3 nodes" in output and "resumed on another node" in output
    assert output.strip().splitlines()[-1] == "[ray-up] passed"
    assert "dist-host" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not work.exists()
    work.parent.rmdir()
