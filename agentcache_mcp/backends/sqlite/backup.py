"""A consistent copy of a live SQLite store, verified before it is reported: `agentcache-mcp backup`.

SQLite's online backup API copies the database page by page through SQLite itself, so what is still in the
`-wal` file is included and no half-written page is copied. The copy is taken inside ONE read transaction
on the source: every step reads the same snapshot, so servers writing meanwhile neither make the backup
restart nor end up half in it (in WAL mode they are not held up by the reader either). The copy is written
to a temporary file beside the destination, switched to a single-file journal, checked with
`PRAGMA integrity_check` (which covers the FTS5 keyword index too), and only then moved into place.

The destination is checked and written as `output_files` says: never one of the store's own files, never
an existing file or a link without `overwrite`, never a special file; the temporary file is created new
(O_EXCL) and owner-only before SQLite opens it, so the copy, and its journal, are 0600.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...output_files import STORE_SUFFIXES, Target, check_target, create_temporary, move_into_place
from .connection import BUSY_TIMEOUT_MS, sqlite3

STEP_PAGES = 1024
"""Pages copied per step (4 MiB at the default page size): how often progress is reported."""

SQLITE_HEADER = b"SQLite format 3\x00"


class BackupError(RuntimeError):
    """The backup could not be made or did not verify; the destination was left as it was."""


@dataclass(slots=True, frozen=True)
class BackupResult:
    dest: Path
    bytes: int
    pages: int
    memories: int | None
    """Memories in the copy (None if the file holds no memories table)."""
    integrity_check: str
    seconds: float


def backup_sqlite(
    source: Path,
    dest: Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    verifying: Callable[[], None] | None = None,
    step_pages: int | None = None,
) -> BackupResult:
    """Copy the SQLite database `source` to `dest` while other processes may be using it; verify the copy.

    `progress(pages_done, pages_total)` is called after each step, `verifying()` once the copy is made and
    its check begins (it reads the whole copy: on a large store it takes a while). Raises
    output_files.TargetRefused (nothing written) if `dest` is one of the store's files or a special file, or
    exists and not `overwrite`; BackupError (nothing written at `dest`) if the source is missing or not
    SQLite, or the copy fails `integrity_check`."""
    started = time.monotonic()
    # with overwrite, DEST's -wal, -shm and -journal are deleted too: they must not be the store's either
    target = check_target(
        dest, store=source, force=overwrite, streams=False, companions=STORE_SUFFIXES[1:] if overwrite else ()
    )
    _check_source(source)
    tmp, fd = create_temporary(target.entry)
    try:
        pages, memories = _copy(source, tmp, step_pages or STEP_PAGES, progress)
        if verifying is not None:
            verifying()
        verdict = _verify(tmp)
        if not os.path.samestat(os.fstat(fd), os.lstat(tmp)):
            raise BackupError(f"the temporary copy {tmp} was replaced by another file; nothing was written")
        os.fsync(fd)
        _move_into_place(tmp, target, overwrite)
    finally:
        os.close(fd)
        for leftover in (tmp, *_companions(tmp)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return BackupResult(
        dest=dest,
        bytes=dest.stat().st_size,
        pages=pages,
        memories=memories,
        integrity_check=verdict,
        seconds=time.monotonic() - started,
    )


def _check_source(source: Path) -> None:
    if not source.is_file():
        raise BackupError(f"no memory database at {source}")
    try:
        with source.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise BackupError(f"cannot read {source}: {exc.strerror}") from None
    if header != SQLITE_HEADER:
        raise BackupError(f"{source} is not a SQLite database")


def _copy(
    source: Path, tmp: Path, step_pages: int, progress: Callable[[int, int], None] | None
) -> tuple[int, int | None]:
    """Copy inside one read transaction on the source; returns (pages, memories in that snapshot)."""
    try:
        src = sqlite3.connect(str(source), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source}: {exc}") from None
    try:
        dst = sqlite3.connect(str(tmp), isolation_level=None)
    except sqlite3.Error as exc:
        src.close()
        raise BackupError(f"cannot create the copy beside {tmp.parent}: {exc}") from None
    pages_total = 0

    def step(_status: int, remaining: int, total: int) -> None:
        nonlocal pages_total
        pages_total = total
        if progress is not None:
            progress(total - remaining, total)

    try:
        src.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        src.execute("PRAGMA query_only = ON")
        src.execute("BEGIN")  # one snapshot for every step, and for the count below
        src.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        src.backup(dst, pages=step_pages, progress=step)
        try:
            memories: int | None = int(src.execute("SELECT count(*) FROM memories").fetchone()[0])
        except sqlite3.OperationalError:
            memories = None  # a SQLite file, but not (yet) a memory store
        src.execute("COMMIT")
        dst.execute("PRAGMA journal_mode = DELETE")  # a single file, whatever mode the source was in
    except sqlite3.Error as exc:
        raise BackupError(f"the backup of {source} failed: {exc}") from None
    finally:
        dst.close()
        src.close()
    return pages_total, memories


def _verify(copy: Path) -> str:
    db = sqlite3.connect(str(copy), isolation_level=None)
    try:
        rows = [str(r[0]) for r in db.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.Error as exc:
        raise BackupError(f"the copy could not be checked: {exc}") from None
    finally:
        db.close()
    if rows != ["ok"]:
        shown = "; ".join(rows[:3]) + (f"; and {len(rows) - 3} more problems" if len(rows) > 3 else "")
        raise BackupError(f"the copy failed integrity_check ({shown}); nothing was written")
    return "ok"


def _move_into_place(tmp: Path, target: Target, overwrite: bool) -> None:
    if overwrite:
        # a journal left by an earlier database at dest would be applied to the copy when it is opened
        for stale in _companions(target.entry):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    move_into_place(tmp, target, force=overwrite)


def _companions(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in STORE_SUFFIXES[1:]]
