"""Files and directories written atomically: built under a temporary name beside the target, then renamed over it,
so a reader (or a run after a kill -9) sees the old version or the whole new one, never a part."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file for writing (``mode`` ``w`` or ``wb``); on a clean exit it is flushed, fsynced and
    renamed to ``path``; on an error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are as readable as any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on a clean exit it replaces ``path`` (an existing ``path`` is removed
    only once the new one is in place); on an error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; what it becomes is as readable as any other directory
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files or directories of ``path`` left behind by killed writers."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"))


def read_json(path: str | Path) -> Any:
    """The JSON value in ``path``; ValueError naming the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as JSON (non-JSON values as ``str``), atomically."""
    with atomic_file(path) as f:
        json.dump(payload, f, indent=2, default=str, ensure_ascii=False)


def check_writable(path: str | Path) -> Path:
    """``path`` if a file can be written there (checked before any long job); ValueError naming it otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output path {path} is a directory; give a file name")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {parent} is not a writable directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {path}: the file is read-only")
    return path


def keep_previous(path: str | Path) -> Path | None:
    """Move an existing ``path`` to the first free ``<stem>.<k><suffix>`` beside it (k = 1, 2, ...), so what it
    held survives a new write; returns where it went."""
    path = Path(path)
    if not path.exists():
        return None
    k = 1
    while (kept := path.with_name(f"{path.stem}.{k}{path.suffix}")).exists():
        k += 1
    os.replace(path, kept)
    return kept
