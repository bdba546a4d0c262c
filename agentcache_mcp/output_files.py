"""The files the commands write (`export -o`, `backup`): never one of the store's own files, never over a
file or through a link unasked, readable by the owner only, never half written.

`check_target` runs before any work. It refuses the store's files (the database and its -wal, -shm and
-journal, existing or not) on any spelling: relative, `..`, repeated slashes, a symbolic link to one or
through a linked directory (both sides are resolved), a hard link (same inode), and a name that differs
from one only in case in the store's directory (the same file on macOS and Windows). An existing file is
refused unless `force`; so is a symbolic link, which `force` replaces (the link, never the file it points
to). A FIFO, a terminal or /dev/null is a stream: written in place, nothing to overwrite. Any other
special file (a disk, a socket, another device: not even opened) is refused even with `force`, and so is
any other name in /dev, /proc or /sys (/dev/stderr or /dev/fd/3 naming a regular file: as root, replacing
that link would break the system).

A file is written to a temporary name beside the target, created with O_EXCL | O_NOFOLLOW (so it is never
an existing file or a link planted there) and mode 0600 whatever the umask, then moved into place:
hard-linked without `force`, which fails if a file appeared at the target meanwhile (it is kept, the write
refused), or renamed over the target with `force`, which replaces the directory entry, so a file made
0644 before ends up 0600. On failure the temporary file is removed: the target is as it was.

Left open: someone who can rename directories on the target's path between the check and the move can
redirect the move; such a user can replace the files directly anyway.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STORE_SUFFIXES = ("", "-wal", "-shm", "-journal")
"""The SQLite database and the files SQLite keeps beside it, named after it."""

PRIVATE_MODE = 0o600
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)  # POSIX only (Python's descriptors are not inherited anyway)
TEMPORARY_TRIES = 8


class TargetRefused(Exception):
    """The target may not be written; `usage` when no --force could make it right (exit 2), else exit 1."""

    def __init__(self, message: str, *, usage: bool):
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True, slots=True)
class Target:
    path: Path
    """Absolute, as named: what messages show."""
    entry: Path
    """The directory entry written: the named file in its directory with every link in the directory
    resolved (a link at the entry itself is kept: with force, it is what gets replaced)."""
    stream: bool
    """A FIFO, a terminal or /dev/null: written in place."""


def check_target(
    named: str | Path, *, store: Path | None, force: bool, streams: bool, companions: Sequence[str] = ()
) -> Target:
    """Check a file a command is about to write, before it starts (see the module doc); raises
    TargetRefused. `store`: the SQLite database (None for PostgreSQL). `streams`: a FIFO or terminal may be
    written in place. `companions`: suffixes of files beside the target the command deletes too."""
    path = Path(os.path.abspath(Path(named).expanduser()))
    entry = Path(os.path.realpath(path.parent)) / path.name
    if store is not None:
        for candidate in (entry, *(entry.with_name(entry.name + s) for s in companions)):
            if (what := _store_file(candidate, store)) is not None:
                raise TargetRefused(f"{path} is {what}: name another file", usage=True)
    link: os.stat_result | None = None
    pointed: os.stat_result | None = None
    with contextlib.suppress(FileNotFoundError):
        link = os.lstat(entry)
    if link is not None:
        with contextlib.suppress(OSError):  # a dangling link, or one into a place we may not look
            pointed = os.stat(entry)
    if pointed is not None and not stat.S_ISREG(pointed.st_mode):
        if streams and _is_stream(pointed):
            return Target(path, entry, stream=True)
        raise TargetRefused(f"{path} is not a regular file ({_kind(pointed)}): name a file", usage=True)
    if _system_directory(entry.parent):
        # /dev/stderr, /dev/fd/N, /proc/self/fd/N name a file only through a link that is not ours to replace
        # (as root, a rename there would replace the system's /dev/stderr)
        raise TargetRefused(
            f"{path} is in {entry.parent}, where only a FIFO, a terminal or /dev/null is written (stdout: -o -)",
            usage=True,
        )
    if link is None:
        return Target(path, entry, stream=False)
    if stat.S_ISLNK(link.st_mode):
        if not force:
            raise TargetRefused(
                f"{path} is a symbolic link (to {os.readlink(entry)}): name another file, or use --force to "
                "replace the link itself (the file it points to is not written)",
                usage=False,
            )
    elif not force:
        raise TargetRefused(f"{path} already exists: name another file, or use --force to overwrite it", usage=False)
    return Target(path, entry, stream=False)


SYSTEM_DIRECTORIES = ("/dev", "/proc", "/sys")


def _system_directory(directory: Path) -> bool:
    return os.name == "posix" and any(directory == Path(d) or Path(d) in directory.parents for d in SYSTEM_DIRECTORIES)


def _store_file(candidate: Path, store: Path) -> str | None:
    """What of the store `candidate` is, by name (resolved, any case) or by inode; None if nothing."""
    spots = {candidate}
    if os.path.islink(candidate):
        spots.add(Path(os.path.realpath(candidate)))
    for base in {Path(os.path.abspath(store)), Path(os.path.realpath(store))}:
        directory = Path(os.path.realpath(base.parent))
        for suffix in STORE_SUFFIXES:
            own = directory / (base.name + suffix)
            what = "the database itself" if not suffix else f"the database's {suffix} file"
            if own != candidate:
                what += f" ({own})"
            for spot in spots:
                if _folded(spot.name) == _folded(own.name) and _same_directory(spot.parent, directory):
                    return what
                if _same_inode(spot, own):
                    return what
    return None


def _folded(name: str) -> str:
    """A name as a case-insensitive file system compares it (macOS also normalises Unicode)."""
    return unicodedata.normalize("NFC", name).casefold()


def _same_directory(a: Path, b: Path) -> bool:
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return a == b or _same_inode(a, b)


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _is_stream(st: os.stat_result) -> bool:
    """A FIFO, the null device or a terminal: a stream, where writing overwrites nothing. Decided from stat
    alone: opening an unknown device can have effects of its own (a watchdog starts counting, a tape
    rewinds)."""
    if stat.S_ISFIFO(st.st_mode):
        return True
    return stat.S_ISCHR(st.st_mode) and st.st_rdev in _stream_devices()


def _stream_devices() -> set[int]:
    """The device numbers of /dev/null, /dev/tty and the terminals this process's stdin, stdout and stderr
    are on."""
    devices = set()
    for name in (os.devnull, "/dev/tty"):
        with contextlib.suppress(OSError):
            if stat.S_ISCHR((st := os.stat(name)).st_mode):
                devices.add(st.st_rdev)
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                devices.add(os.fstat(fd).st_rdev)
    return devices


def _kind(st: os.stat_result) -> str:
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISBLK(st.st_mode):
        return "a block device"
    if stat.S_ISCHR(st.st_mode):
        return "a device"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO"
    return "a special file"


def open_stream(target: Target) -> int:
    """A write descriptor on a stream target (no O_CREAT, no O_TRUNC: a file swapped in since the check is
    neither created nor truncated, and is refused)."""
    fd = os.open(target.entry, os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | _CLOEXEC)
    if not _is_stream(os.fstat(fd)):
        os.close(fd)
        raise TargetRefused(f"{target.path} changed since it was checked: it is no longer a FIFO or terminal", usage=False)
    return fd


def create_temporary(entry: Path) -> tuple[Path, int]:
    """A new, empty, owner-only file beside `entry` (hidden, `.NAME.RANDOM.partial`), and a descriptor open
    for writing on it. A name already taken, or with a journal beside it (SQLite would apply that journal
    to a copy written there), is skipped for another."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(TEMPORARY_TRIES):
        tmp = entry.with_name(f".{entry.name}.{secrets.token_hex(4)}.partial")
        if any(os.path.lexists(tmp.with_name(tmp.name + suffix)) for suffix in STORE_SUFFIXES[1:]):
            continue
        try:
            fd = os.open(tmp, flags, PRIVATE_MODE)
        except FileExistsError:
            continue
        if hasattr(os, "fchmod"):
            os.fchmod(fd, PRIVATE_MODE)  # the umask may have taken bits away (never added any)
        return tmp, fd
    raise TargetRefused(f"no free temporary name beside {entry} after {TEMPORARY_TRIES} tries", usage=False)


def move_into_place(tmp: Path, target: Target, *, force: bool) -> None:
    """Move the finished temporary file to the target (see the module doc); the caller removes `tmp`."""
    if force:
        os.replace(tmp, target.entry)
    else:
        try:
            os.link(tmp, target.entry)  # fails if a file appeared meanwhile: never overwrite unasked
        except FileExistsError:
            raise TargetRefused(
                f"{target.path} already exists: name another file, or use --force to overwrite it", usage=False
            ) from None
        except OSError:  # a file system without hard links
            if os.path.lexists(target.entry):
                raise TargetRefused(
                    f"{target.path} already exists: name another file, or use --force to overwrite it", usage=False
                ) from None
            os.replace(tmp, target.entry)
    fsync_directory(target.entry.parent)


def fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private_file(path: Path) -> bool:
    """Create `path` empty and owner-only if nothing is there (not even a link); whether it was created.
    For a new SQLite database: SQLite gives its -wal, -shm and -journal the database's mode."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, PRIVATE_MODE)
    except FileExistsError:  # made meanwhile by another process, or a link the user placed: theirs
        return False
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, PRIVATE_MODE)
    finally:
        os.close(fd)
    return True
