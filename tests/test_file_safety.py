"""What export and backup do to files: never write onto the store's own files (the database, its -wal,
-shm and -journal, on any spelling of their path), never replace an existing file or follow a link
without --force, create files for the owner only (0600) whatever the umask, and leave nothing half
written. The default data folder is created 0700 and a new database 0600 (its -wal and -shm take its mode).

The commands run in-process through `cli.main`, as in test_cli_commands.py (whose helpers these reuse).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli_commands import cli_environment, one_error_line, run, stored  # noqa: F401 (an autouse fixture)

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings, default_db_path

from conftest import HashEmbedder


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A store with three memories, in a folder of its own (so `..` spellings have somewhere to go)."""
    path = tmp_path / "store" / "memory.db"
    path.parent.mkdir()
    memory = open_memory(Settings(db_path=path), embedder=HashEmbedder())
    try:
        for text in ("Alice prefers tabs", "The deploy key rotates every 90 days", "Bob's birthday is in March"):
            memory.remember(text)
        memory.embed_pending()
    finally:
        memory.close()
    return path


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def fingerprint(db: Path) -> dict[str, tuple[int, str] | None]:
    """Each store file: (inode, sha256 of its bytes), or None where it does not exist. The -shm is left out
    of the bytes: readers write their read marks into it."""
    prints: dict[str, tuple[int, str] | None] = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = db.with_name(db.name + suffix)
        if not os.path.lexists(path):
            prints[suffix] = None
            continue
        body = b"" if suffix == "-shm" else path.read_bytes()
        prints[suffix] = (path.lstat().st_ino, hashlib.sha256(body).hexdigest())
    return prints


# --- the store's own files, on any spelling ---------------------------------------------------------------


def _spellings(tmp: Path, db: Path) -> dict[str, Callable[[], str]]:
    """name -> a function that prepares the spelling (links) and returns it."""

    def link(name: str, to: Path) -> str:
        (tmp / name).symlink_to(to)
        return str(tmp / name)

    def hard_link() -> str:
        os.link(db, tmp / "hard.db")
        return str(tmp / "hard.db")

    return {
        "the-database": lambda: str(db),
        "its-wal": lambda: f"{db}-wal",
        "its-shm": lambda: f"{db}-shm",
        "its-journal": lambda: f"{db}-journal",
        "relative": lambda: "store/memory.db",
        "relative-wal-with-dots": lambda: "./store/../store/memory.db-wal",
        "double-slashes": lambda: f"{tmp}//store///memory.db",
        "symlink-to-the-database": lambda: link("link.db", db),
        "symlink-to-the-wal": lambda: link("wal-link", db.with_name(db.name + "-wal")),
        "wal-through-a-symlinked-directory": lambda: link("linkdir", db.parent) + "/memory.db-wal",
        "hard-link-to-the-database": hard_link,
        "wal-in-another-case": lambda: str(db.with_name("MEMORY.DB-WAL")),
    }


SPELLINGS = list(_spellings(Path("/"), Path("/x")))


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("server", ["server-running", "no-server"])
def test_export_and_backup_refuse_the_stores_own_files_on_any_spelling(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str,
    server: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    target = _spellings(tmp_path, db)[spelling]()
    # a running server holds the -wal and -shm open (they exist); with none, they do not (yet)
    running = open_memory(Settings(db_path=db), embedder=HashEmbedder()) if server == "server-running" else None
    try:
        before = fingerprint(db)
        for argv in (["export", "-o", target], ["backup", target]):
            for force in ([], ["--force"]):
                code, out, err = run(capsys, "--db", db, *argv, *force)
                assert (code, out) == (2, ""), (argv, force, err)
                assert "the database" in one_error_line(err), (argv, force)
                assert fingerprint(db) == before, (argv, force)
        assert not [p.name for p in db.parent.iterdir() if "partial" in p.name or p.name.lower() != p.name]
    finally:
        if running is not None:
            running.close()
    assert len(stored(db)) == 3


def test_backup_with_force_refuses_a_destination_whose_journal_name_is_the_stores(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """backup --force deletes DEST-wal, -shm and -journal (an old database's journal would be applied to
    the copy): with a store named `x.db-journal`, DEST `x.db` would delete the store."""
    db = tmp_path / "x.db-journal"
    open_memory(Settings(db_path=db), embedder=HashEmbedder()).close()
    (tmp_path / "x.db").write_bytes(b"an old file")
    before = fingerprint(db)
    code, out, err = run(capsys, "--db", db, "backup", tmp_path / "x.db", "--force")
    assert (code, out) == (2, "") and "the database" in one_error_line(err)
    assert fingerprint(db) == before and (tmp_path / "x.db").read_bytes() == b"an old file"


# --- existing files, links, special files ----------------------------------------------------------------


def test_export_refuses_to_overwrite_an_existing_file_without_force(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    target = tmp_path / "notes.jsonl"
    target.write_text("my own notes\n")
    code, out, err = run(capsys, "--db", db, "export", "-o", target)
    assert (code, out) == (1, "")
    assert "already exists: name another file, or use --force to overwrite it" in one_error_line(err)
    assert target.read_text() == "my own notes\n"

    code, out, err = run(capsys, "--db", db, "export", "-o", target, "--force")
    assert code == 0 and err == "" and f"exported 3 memories (every namespace) to {target}" in out
    assert json.loads(target.read_text().splitlines()[0])["format"] == "agentcache-export"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


@pytest.mark.parametrize("command", ["export", "backup"])
@pytest.mark.parametrize("link", ["to-a-file", "dangling"])
def test_a_symlink_target_is_refused_without_force_and_replaced_not_followed_with_force(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path, command: str, link: str
) -> None:
    other = tmp_path / "other.txt"
    if link == "to-a-file":
        other.write_text("another file's content\n")
    target = tmp_path / "out"
    target.symlink_to(other)
    argv = ["export", "-o", target] if command == "export" else ["backup", target]
    code, out, err = run(capsys, "--db", db, *argv)
    assert (code, out) == (1, "")
    assert "is a symbolic link" in one_error_line(err) and "--force" in err
    assert target.is_symlink() and (other.read_text() if other.exists() else None) == (
        "another file's content\n" if link == "to-a-file" else None
    )

    code, out, err = run(capsys, "--db", db, *argv, "--force")
    assert code == 0 and err == ""
    assert not target.is_symlink() and target.is_file() and mode(target) == 0o600
    if link == "to-a-file":
        assert other.read_text() == "another file's content\n"  # the link was replaced, not written through
    else:
        assert not other.exists()


def test_export_streams_into_a_fifo(capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path) -> None:
    """A FIFO (or `-o >(gzip > f)`, which is a pipe) is a stream: written in place, no temporary file, no
    --force needed (nothing is overwritten), and left a FIFO."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    code, _, err = run(capsys, "--db", db, "export", "-o", fifo)
    reader.join(timeout=30)
    if reader.is_alive():  # the export never opened the FIFO: let the reader go before failing
        with fifo.open("wb"):
            pass
        reader.join(timeout=10)
    assert code == 0 and err == "", err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert received and len(received[0].splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "store"]


def test_export_to_dev_stdout_writes_to_stdout(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    """Not a file in /dev to replace (as root the old export renamed its temporary file over /dev/stdout)."""
    code, out, err = run(capsys, "--db", db, "export", "-o", "/dev/stdout")
    assert (code, err) == (0, "")
    assert [json.loads(line)["format"] for line in out.splitlines()[:1]] == ["agentcache-export"]
    assert len(out.splitlines()) == 4


def test_export_never_replaces_a_name_in_dev(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    """/dev/null is a stream (written, left a device); /dev/zero is a device that is not one (refused); a
    /dev/fd/N naming a regular file is a link in /dev or /proc, never replaced (as root the old export would
    rename its temporary file over /dev/zero)."""
    for force in ([], ["--force"]):
        code, out, err = run(capsys, "--db", db, "export", "-o", "/dev/null", *force)
        assert (code, err) == (0, "") and out.endswith("to /dev/null\n")
        assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
        code, out, err = run(capsys, "--db", db, "export", "-o", "/dev/zero", *force)
        assert (code, out) == (2, "") and "is not a regular file (a device)" in one_error_line(err)
        assert stat.S_ISCHR(os.lstat("/dev/zero").st_mode)
    kept = tmp_path / "kept.txt"
    kept.write_text("kept\n")
    with kept.open("a") as f:
        code, out, err = run(capsys, "--db", db, "export", "-o", f"/dev/fd/{f.fileno()}", "--force")
    assert (code, out) == (2, "") and "where only a FIFO, a terminal or /dev/null is written" in one_error_line(err)
    assert kept.read_text() == "kept\n"


def test_backup_refuses_a_target_that_is_not_a_regular_file_even_with_force(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for force in ([], ["--force"]):
        code, out, err = run(capsys, "--db", db, "backup", fifo, *force)
        assert (code, out) == (2, "")
        assert "is not a regular file" in one_error_line(err)
        assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "store"]


# --- owner-only files and folders ---------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_022")
def test_export_and_backup_files_are_owner_only_whatever_the_umask(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    for argv, target in (
        (["export", "-o"], tmp_path / "new.jsonl"),
        (["backup"], tmp_path / "new.db"),
    ):
        code, _, err = run(capsys, "--db", db, *argv, target)
        assert (code, err) == (0, "") and mode(target) == 0o600
        target.unlink()
        target.write_text("an older file, readable by all\n")
        target.chmod(0o644)
        code, _, err = run(capsys, "--db", db, *argv, target, "--force")
        assert (code, err) == (0, "") and mode(target) == 0o600


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("command", ["export", "backup"])
def test_the_temporary_file_is_owner_only_while_it_is_written(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Not only the finished file: the copy is private from its first byte."""
    from agentcache_mcp.backends.sqlite import backup as backup_module
    from agentcache_mcp.memory import exchange

    seen: list[int] = []

    def look() -> None:
        seen.extend(mode(p) for p in tmp_path.iterdir() if p.name.endswith(".partial"))

    if command == "export":
        real_export = exchange.export_jsonl

        def export_and_look(*args: Any, **kwargs: Any) -> int:
            written = real_export(*args, **kwargs)
            look()
            return written

        monkeypatch.setattr(exchange, "export_jsonl", export_and_look)
        argv: list[str | Path] = ["export", "-o", tmp_path / "out.jsonl"]
    else:
        real_verify = backup_module._verify

        def verify_and_look(copy: Path) -> str:
            look()
            return real_verify(copy)

        monkeypatch.setattr(backup_module, "_verify", verify_and_look)
        argv = ["backup", tmp_path / "out.db"]
    code, _, err = run(capsys, "--db", db, *argv)
    assert (code, err) == (0, "")
    assert seen == [0o600]


@pytest.mark.usefixtures("umask_022")
def test_the_default_data_folder_and_a_new_database_are_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path = default_db_path()
    assert path.parent == tmp_path / "data" / "agentcache"
    memory = open_memory(Settings(), embedder=HashEmbedder())
    try:
        memory.remember("a private fact")
        assert mode(path.parent) == 0o700
        assert {p.name: mode(p) for p in path.parent.iterdir()} == {
            "memory.db": 0o600,
            "memory.db-wal": 0o600,
            "memory.db-shm": 0o600,
        }
    finally:
        memory.close()
    assert mode(tmp_path / "data") == 0o755  # a parent it had to make is an ordinary folder, as mkdir -p makes


@pytest.mark.usefixtures("umask_022")
def test_a_new_database_in_the_users_folder_is_owner_only_and_an_existing_one_is_left_as_it_is(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir(mode=0o755)
    new = folder / "new.db"
    open_memory(Settings(db_path=new), embedder=HashEmbedder()).close()
    assert mode(new) == 0o600 and mode(folder) == 0o755  # the user's folder is not touched

    new.chmod(0o640)  # the user's choice, e.g. for a backup job's group
    open_memory(Settings(db_path=new), embedder=HashEmbedder()).close()
    assert mode(new) == 0o640


# --- races and leftovers -------------------------------------------------------------------------------------


def test_a_file_created_at_the_target_during_the_export_is_not_overwritten(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before the export and the move after it are apart in time: a file that appears meanwhile
    (another process's) is kept, and the export is refused with nothing left behind."""
    from agentcache_mcp.memory import exchange

    target = tmp_path / "out.jsonl"
    real = exchange.export_jsonl

    def racing(*args: Any, **kwargs: Any) -> int:
        target.write_text("written meanwhile by someone else\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(exchange, "export_jsonl", racing)
    code, out, err = run(capsys, "--db", db, "export", "-o", target)
    assert (code, out) == (1, "") and "already exists" in one_error_line(err)
    assert target.read_text() == "written meanwhile by someone else\n"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


@pytest.mark.parametrize(("command", "taken"), [("export", ""), ("backup", ""), ("backup", "-journal")])
def test_the_temporary_file_never_reuses_an_existing_name(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str,
    taken: str,
) -> None:  # fmt: skip
    """The copy is written to a temporary name beside the target, then moved into place. A file already at
    that name (or a rollback journal beside it, which SQLite would apply to the copy) is neither written,
    nor read, nor deleted: another name is taken."""
    tokens = iter(["deadbeef", "0badf00d", "12345678", "9abcdef0"])
    monkeypatch.setattr(secrets, "token_hex", lambda n=None: next(tokens))
    target = tmp_path / ("out.jsonl" if command == "export" else "out.db")
    precious = tmp_path / f".{target.name}.deadbeef.partial{taken}"
    precious.write_bytes(b"someone's file\n")
    argv = ["export", "-o", target] if command == "export" else ["backup", target]
    code, _, err = run(capsys, "--db", db, *argv)
    assert (code, err) == (0, "")
    assert precious.read_bytes() == b"someone's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([precious.name, target.name, "store"])
    if command == "backup":
        assert len(stored(target)) == 3
