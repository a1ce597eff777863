"""Files: atomic writes and content hashes, so a crash never leaves a half-written file that looks finished."""

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def append_json_line(path: str | Path, record: dict) -> None:
    """Append `record` as one line to the JSON-lines log at `path` (the logs of jobs and stages). After a crash
    in the middle of an append, the cut line is closed first, so that this record stays a line of its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as log_file:
        cut = log_file.tell() > 0 and log_file.seek(-1, os.SEEK_END) >= 0 and log_file.read(1) != b"\n"
        log_file.write((("\n" if cut else "") + json.dumps(record) + "\n").encode())


def read_json_lines(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log, oldest first; none when it does not exist yet. A line that is not a
    whole record (cut short by a crash or a full disk while it was appended) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tensor(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def fingerprint(value: Any) -> str:
    """SHA-256 of plain JSON values in a canonical form: equal values, equal fingerprint."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_home() -> Path:
    """The per-user cache folder: $DISTILLERY_CACHE, else $XDG_CACHE_HOME/distillery, else ~/.cache/distillery."""
    if os.environ.get("DISTILLERY_CACHE"):
        return Path(os.environ["DISTILLERY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "distillery"
