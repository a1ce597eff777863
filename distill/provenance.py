"""Where a result came from: package versions, git commit and machine, recorded with every run and checkpoint."""

import os
import platform
import subprocess
from pathlib import Path

import torch

import distill


def versions() -> dict[str, str]:
    import numpy
    import torchvision

    # str(): torch's version object is a str subclass that weights_only loading refuses.
    return {"distillery": distill.__version__, "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": numpy.__version__,
            "python": platform.python_version()}


def git_sha() -> str | None:
    """The checkout's commit, with "-dirty" when tracked files differ from it (the result then came from code no
    commit holds); DISTILLERY_GIT_SHA names it where the code travels without .git (a copied tree)."""
    if os.environ.get("DISTILLERY_GIT_SHA"):
        return os.environ["DISTILLERY_GIT_SHA"]

    def git(*args: str) -> str:
        # --no-optional-locks: a status that refreshes .git/index could make a concurrent `git commit` fail.
        return subprocess.run(["git", "--no-optional-locks", *args], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return f"{sha}-unknown" if sha else None
    return (sha + ("-dirty" if changed else "")) or None


def short_sha(sha: str | None) -> str:
    """A commit for a table: its first 8 digits, keeping the "-dirty" mark of `git_sha`."""
    if not sha:
        return "unknown"
    return sha[:8] + ("-dirty" if sha.endswith("-dirty") else "")


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform(terse=True)}"
