"""The subcommands for people and scripts: recall, list, show, forget, stats, erase, reembed, backup, export,
import.

Each runs `cli.main` in-process on an empty and on a populated store, with the fake embedder from conftest in
place of the sentence-transformers model (patched where `app.open_memory` builds its default), so no test
but the one marked `model` loads torch. Checked for every command: the exit code (0 done, 1 failed, 2 usage
error), one line on stderr for an error, --json printing one JSON document and nothing else on stdout, and
nothing on stderr when it is not a terminal.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlean  # the app's SQLite: a second SQLite library in one process would drop its locks (POSIX)

from agentcache_mcp import app, cli, console
from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.sqlite import backup as backup_module
from agentcache_mcp.config import DEFAULT_MODEL, ENV_VARIABLES, Settings

from conftest import HashEmbedder

OTHER_MODEL = "other-test-model"


class FakeModel(HashEmbedder):
    """What the CLI gets instead of SentenceTransformerEmbedder: the default model is the hash embedder the
    stores below were embedded with; any other name is a model of its own (same maths, another id)."""

    made: list[FakeModel] = []  # noqa: RUF012

    def __init__(self, model: str = DEFAULT_MODEL, *, batch_size: int = 64, **_: Any):
        super().__init__()
        if model != DEFAULT_MODEL:
            self.model_id = model
        self.loads = 0
        FakeModel.made.append(self)

    def load(self) -> None:
        self.loads += 1


@pytest.fixture(autouse=True)
def cli_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No setting from the developer's shell; the fake model; whatever main() sets is undone afterwards."""
    for name in (*ENV_VARIABLES, *cli.QUIET_THIRD_PARTY, "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.setattr(app, "SentenceTransformerEmbedder", FakeModel)
    FakeModel.made.clear()
    yield


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "memory.db"


@pytest.fixture
def empty(db: Path) -> Path:
    """A store with no memories."""
    open_memory(Settings(db_path=db), embedder=HashEmbedder()).close()
    return db


TEXTS = [
    ("Alice prefers tabs over spaces in Python", ["alice", "style"]),
    ("The staging database runs PostgreSQL 16 on port 5433", ["infra"]),
    ("Bob's birthday is on the 3rd of March", ["bob"]),
    ("Alice uses Neovim with the gruvbox theme", ["alice", "editor"]),
    ("The deploy key rotates every 90 days", ["infra", "security"]),
]


@pytest.fixture
def populated(db: Path) -> dict[str, str]:
    """Five memories in 'default' (written in this order, a second apart in created_at) and two in 'work',
    all embedded with the fake model; returns text -> id."""
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    ids = {}
    try:
        for text, tags in TEXTS:
            ids[text] = memory.remember(text, tags=tags).id
        for text in ("Quarterly report is due on Friday", "The office moves to the third floor"):
            ids[text] = memory.remember(text, namespace="work", tags=["office"]).id
        memory.embed_pending()
    finally:
        memory.close()
    return ids


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """cli.main(argv) -> (exit code, stdout, stderr)."""
    code = 0
    try:
        cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("agentcache-mcp: ") and "Traceback" not in err
    return lines[0]


def stored(db: Path, namespace: str | None = None) -> list[str]:
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    try:
        counts = memory.backend.memories.counts_by_namespace()
        names = [namespace] if namespace else list(counts)
        return [m.id for ns in names for m in memory.backend.memories.recent(ns, 100)]
    finally:
        memory.close()


# --- every command: --db before or after the subcommand, empty and populated stores -----------------------

COMMAND_LINES = [
    ["recall", "alice editor"],
    ["list"],
    ["stats", "--json"],
    ["forget", "--tag", "alice"],
    ["reembed"],
    ["export"],
]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=lambda a: a[0])
@pytest.mark.parametrize("where", ["before", "after"])
def test_db_before_or_after_the_subcommand(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, argv: list[str], where: str
) -> None:
    if argv[0] == "export":
        pytest.importorskip("agentcache_mcp.memory.exchange", reason="the export module is not written yet")
    full = ["--db", str(db), *argv] if where == "before" else [*argv, "--db", str(db)]
    code, _, err = run(capsys, *full)
    assert code == 0, err
    assert err == ""  # no log lines, no progress bar: stderr is not a terminal here


@pytest.mark.parametrize(
    "argv",
    [
        ["recall", "anything"],
        ["list"],
        ["show", "01JH3X5ZQ8W5V1R7Y0K2M4N6P8"],
        ["forget", "--tag", "x"],
        ["reembed"],
        ["backup", "{tmp}/copy.db"],
        ["export"],
    ],
    ids=lambda a: a[0],
)
def test_a_missing_database_is_a_failure_and_is_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    db = tmp_path / "typo.db"
    code, out, err = run(capsys, "--db", db, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 1 and out == ""
    assert f"no memory database at {db}" in one_error_line(err)
    assert not db.exists()


# --- recall -----------------------------------------------------------------------------------------------


def test_recall_prints_a_table_and_how_it_ranked(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    code, out, err = run(capsys, "--db", db, "recall", "which", "Neovim", "theme", "does", "Alice", "use")
    assert code == 0 and err == ""
    first = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert populated["Alice uses Neovim with the gruvbox theme"] in first
    assert "Neovim" in first and "alice, editor" in first
    assert "retrieval: hybrid" in out
    assert "Quarterly" not in out  # another namespace
    assert FakeModel.made[-1].loads == 1  # the model is loaded up front: no background loader in the CLI


def test_recall_json_is_what_the_tool_returns(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    from agentcache_mcp.server import MemoryHit, RecallResult

    code, out, err = run(capsys, "recall", "Alice Neovim theme", "--db", db, "--json", "--limit", "2")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert RecallResult.model_validate(data).model_dump(mode="json") == data  # the tool's shape, field for field
    assert list(data) == ["results", "retrieval", "retrieval_note", "match"]
    assert len(data["results"]) == 2 and data["retrieval"] == "hybrid" and data["retrieval_note"] is None
    assert data["results"][0]["id"] == populated["Alice uses Neovim with the gruvbox theme"]
    assert list(data["results"][0]) == list(MemoryHit.model_fields)


def test_recall_namespace_and_tag(capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path) -> None:
    code, out, _ = run(capsys, "--db", db, "recall", "report", "--namespace", "work", "--json")
    assert code == 0
    assert [h["namespace"] for h in json.loads(out)["results"]] == ["work"] * len(json.loads(out)["results"])
    code, out, _ = run(capsys, "--db", db, "recall", "alice", "--tag", "editor", "--json")
    assert [h["id"] for h in json.loads(out)["results"]] == [populated["Alice uses Neovim with the gruvbox theme"]]


def test_recall_does_not_count_as_a_use(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    run(capsys, "--db", db, "recall", "alice")
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    try:
        assert all(m.access_count == 0 for m in memory.backend.memories.recent("default", 100))
    finally:
        memory.close()


def test_recall_on_an_empty_store(capsys: pytest.CaptureFixture[str], empty: Path) -> None:
    code, out, err = run(capsys, "--db", empty, "recall", "anything")
    assert code == 0 and err == ""
    assert "no memory of namespace 'default' matches 'anything'" in out
    code, out, _ = run(capsys, "--db", empty, "recall", "anything", "--json")
    assert json.loads(out) == {
        "results": [],
        "retrieval": "keyword",
        "retrieval_note": "namespace 'default' has no memories",
        "match": "none",
    }
    assert all(m.loads == 0 for m in FakeModel.made)  # nothing to rank: the model is not loaded for it


def test_recall_says_keyword_only_when_the_model_fails(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.embeddings import EmbeddingModelError

    class Broken(FakeModel):
        error: EmbeddingModelError | None = None

        def load(self) -> None:
            self.error = EmbeddingModelError("cannot load embedding model 'x': no such file")
            raise self.error

        @property
        def ready(self) -> bool:  # as the real embedder's: a model that failed to load is not ready
            return False

        def wait_ready(self, timeout: float) -> bool:
            return False

    monkeypatch.setattr(app, "SentenceTransformerEmbedder", Broken)
    code, out, err = run(capsys, "--db", db, "recall", "Neovim")
    assert code == 0 and err == ""
    assert "Neovim" in out  # still found, by keyword
    assert "retrieval: keyword only (the embedding model is unavailable (cannot load embedding model" in out


def test_recall_mentions_memories_waiting_for_a_vector(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    from agentcache_mcp.memory.service import CATCH_UP_BATCHES

    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    backlog = CATCH_UP_BATCHES * 64 + 5  # more than a recall embeds itself right after the model loads
    for i in range(backlog):
        memory.remember(f"Alice also likes editor number {i}")  # not embedded
    memory.close()
    code, out, _ = run(capsys, "--db", db, "recall", "alice")
    assert code == 0
    assert "5 memories of the store have no vector from test-hash-embedder yet" in out


# --- list -------------------------------------------------------------------------------------------------


def test_list_is_newest_first(capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path) -> None:
    code, out, err = run(capsys, "--db", db, "list", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["namespace"] == "default" and data["more"] is False
    assert [m["text"] for m in data["memories"]] == [t for t, _ in reversed(TEXTS)]
    code, out, _ = run(capsys, "--db", db, "list")
    rows = [line for line in out.splitlines() if line.startswith("01")]
    assert [populated[t] for t, _ in reversed(TEXTS)] == [r.split()[0] for r in rows]
    assert "the 5 newest of 5 memories in namespace 'default'" in out


def test_list_tags_limit_and_namespace(capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path) -> None:
    _, out, _ = run(capsys, "--db", db, "list", "--tag", "infra", "--json")
    assert [m["text"] for m in json.loads(out)["memories"]] == [
        "The deploy key rotates every 90 days",
        "The staging database runs PostgreSQL 16 on port 5433",
    ]
    _, out, _ = run(capsys, "--db", db, "list", "--tag", "infra", "--tag", "security", "--json")
    assert [m["text"] for m in json.loads(out)["memories"]] == ["The deploy key rotates every 90 days"]
    _, out, _ = run(capsys, "--db", db, "list", "--limit", "2", "--json")
    data = json.loads(out)
    assert len(data["memories"]) == 2 and data["more"] is True
    _, out, _ = run(capsys, "--db", db, "list", "--limit", "2")
    assert "more: raise --limit" in out
    _, out, _ = run(capsys, "--db", db, "list", "--namespace", "work", "--json")
    assert {m["namespace"] for m in json.loads(out)["memories"]} == {"work"}


def test_list_pages_past_the_first_hundred(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    for i in range(230):
        memory.remember(f"note number {i}", tags=["rare"] if i in (3, 150) else [])
    memory.close()
    _, out, _ = run(capsys, "--db", db, "list", "--limit", "1000", "--json")
    texts = [m["text"] for m in json.loads(out)["memories"]]
    assert texts == [f"note number {i}" for i in reversed(range(230))]
    _, out, _ = run(capsys, "--db", db, "list", "--tag", "rare", "--json")
    assert [m["text"] for m in json.loads(out)["memories"]] == ["note number 150", "note number 3"]


def test_list_on_an_empty_store(capsys: pytest.CaptureFixture[str], empty: Path) -> None:
    code, out, err = run(capsys, "--db", empty, "list")
    assert (code, err) == (0, "") and "namespace 'default' has no memories" in out
    _, out, _ = run(capsys, "--db", empty, "list", "--json")
    assert json.loads(out) == {"namespace": "default", "tags": [], "memories": [], "more": False}


def test_list_shows_control_characters_as_escapes(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    memory.remember("innocent \x1b]0;owned\x07 text [bold]not markup[/bold] \u202eevil")
    memory.close()
    _, out, _ = run(capsys, "--db", db, "list")
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b]0;owned\\x07" in out and "[bold]not markup[/bold]" in out and "\\u202eevil" in out
    _, out, _ = run(capsys, "--db", db, "list", "--json")  # JSON carries the text as it is
    assert json.loads(out)["memories"][0]["text"].startswith("innocent \x1b]0;owned\x07")


# --- tables at the width of the terminal -------------------------------------------------------------------


@pytest.mark.parametrize("columns", [80, 100, 160])
@pytest.mark.parametrize("argv", [["list"], ["recall", "Alice", "Neovim", "deploy", "key"], ["forget", "--tag", "alice"]])
def test_tables_keep_whole_ids_scores_and_readable_text_at_80_100_and_160_columns(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, monkeypatch: pytest.MonkeyPatch,
    columns: int, argv: list[str],
) -> None:  # fmt: skip
    from rich.cells import cell_len

    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, err = run(capsys, "--db", db, *argv)
    assert code == 0 and err == ""
    lines = out.splitlines()
    shown = [(text, memory_id) for text, memory_id in populated.items() if memory_id in out]
    assert len(shown) >= 2, out  # every id shown whole, so it can be passed to show or forget
    for text, memory_id in shown:
        row = next(n for n, line in enumerate(lines) if memory_id in line)
        # the text whole on the row or on the line below it, not one word a line; nothing past the width
        assert text in lines[row] or text in lines[row + 1], out
        assert cell_len(lines[row]) <= columns and cell_len(lines[row + (text not in lines[row])]) <= columns, out
    if argv[0] == "recall":
        assert len(re.findall(r"\b\d\.\d{3}\b", out)) == len(shown)  # each score whole


# --- control characters never reach the terminal ----------------------------------------------------------

HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202e\r\x08\x85\u2028\u061c"
"""What an imported file or a web page may slip into a memory: escape sequences (clear the screen, retitle
the window), a C1 CSI, a bidi override, a carriage return and a backspace (overwrite what was printed)."""


def terminal_safe(text: str) -> bool:
    import unicodedata

    bidi = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
    return not [
        ch for ch in text
        if ch not in "\n\t" and (unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ord(ch) in bidi)
    ]  # fmt: skip


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.fixture
def hostile(db: Path) -> str:
    """A store with one memory whose id, text, tags and metadata carry control characters (an import keeps
    the ids it is given); returns its id."""
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    try:
        m = memory.remember(f"hostile note {HOSTILE} end", tags=[f"tag{HOSTILE}x"], metadata={"k": HOSTILE})
        evil = f"id{HOSTILE}x"
        memory.backend.db.write(lambda c: c.execute("UPDATE memories SET id = ? WHERE id = ?", (evil, m.id)))
        memory.embed_pending()
    finally:
        memory.close()
    return evil


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["list", "--tag", f"tag{HOSTILE}x"],
        ["recall", "hostile", "note"],
        ["recall", f"hostile {HOSTILE}"],
        ["show", "{id}"],
        ["forget", "{id}"],
        ["forget", "--tag", f"tag{HOSTILE}x"],
        ["show", f"nope{HOSTILE}"],
        ["show", f"01JH3X5ZQ8W5V1R7Y0K2M4N6P{HOSTILE}"],
        ["forget", f"nope{HOSTILE}"],
        ["forget", "--namespace", f"ns{HOSTILE}"],
        ["list", "--json"],
        ["recall", "hostile", "--json"],
        ["show", "{id}", "--json"],
        ["forget", "{id}", "--json"],
    ],
    ids=lambda argv: "-".join(a for a in argv if a.isascii() and a.isprintable()),
)
def test_control_characters_from_the_store_or_the_command_line_never_reach_the_terminal(
    capsys: pytest.CaptureFixture[str], hostile: str, db: Path, argv: list[str]
) -> None:
    code, out, err = run(capsys, "--db", db, *[a.replace("{id}", hostile) for a in argv])
    assert terminal_safe(out), out
    assert terminal_safe(err), err
    assert out or err
    if "--json" in argv:
        assert code == 0 and any(HOSTILE in text for text in strings(json.loads(out)))  # the same data, escaped
    elif code == 0:
        assert "\\x1b[2J" in out  # shown, as a visible escape


def test_an_import_refusal_line_never_carries_control_characters(
    capsys: pytest.CaptureFixture[str], empty: Path, tmp_path: Path
) -> None:
    pytest.importorskip("agentcache_mcp.memory.exchange", reason="the import module is not written yet")
    bad = tmp_path / f"bad{HOSTILE}.jsonl"
    bad.write_text(f'{{"text": 5, "id": "x{HOSTILE}"}}\n{HOSTILE}\n', encoding="utf-8")
    for flags in ([], ["--skip-invalid"], ["--dry-run", "--skip-invalid"]):
        _, out, err = run(capsys, "--db", empty, "import", bad, *flags)
        assert terminal_safe(out) and terminal_safe(err), (flags, out, err)
        assert out or err


@pytest.mark.parametrize("argv", [["list", f"--bogus{HOSTILE}"], [f"frob{HOSTILE}"], ["list", "--limit", HOSTILE]])
def test_a_usage_error_never_carries_control_characters(
    capsys: pytest.CaptureFixture[str], empty: Path, argv: list[str]
) -> None:
    code, out, err = run(capsys, "--db", empty, *argv)
    assert code == 2 and out == "" and one_error_line(err)
    assert terminal_safe(err), err


def test_a_refusal_to_start_never_carries_control_characters(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "--db", tmp_path / f"no{HOSTILE}dir" / "m.db", "list")
    assert code == 2 and out == "" and "does not exist" in one_error_line(err)
    assert terminal_safe(err), err


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_a_store_the_server_cannot_use_is_one_line_without_control_characters(
    tmp_path: Path, command: str
) -> None:
    # `list` and `stats` escaped the folder's name; the servers printed it raw (sys.exit(str)).
    folder = tmp_path / f"d{HOSTILE}"
    folder.mkdir()
    (folder / "m.db").write_bytes(b"not a database " * 100)
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-m", "agentcache_mcp", "--db", str(folder / "m.db"), command, *(["--port", "0"] if command == "ui" else [])],
        env={**env, "AUTO_FORGET_ENABLED": "false"}, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "file is not a database" in one_error_line(done.stderr)
    assert terminal_safe(done.stderr), done.stderr


@pytest.mark.slow
def test_log_lines_never_carry_control_characters(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-m", "agentcache_mcp", "--log-level", "INFO", "stats", "--db", str(tmp_path / f"m{HOSTILE}.db")],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "applied schema migration" in done.stderr  # the line names the file
    assert terminal_safe(done.stderr) and terminal_safe(done.stdout), done.stderr


def test_show_keeps_an_id_with_a_line_break_on_one_line_as_list_does(
    capsys: pytest.CaptureFixture[str], db: Path
) -> None:
    # An import keeps the ids it is given, line breaks included. `list` shows 'a\x0astate  forgotten'; `show`
    # printed the line break, so the id ran onto a second line that reads like another field of the memory.
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    try:
        m = memory.remember("a note with a two-line id")
        evil = "a\nstate  forgotten"
        memory.backend.db.write(lambda c: c.execute("UPDATE memories SET id = ? WHERE id = ?", (evil, m.id)))
    finally:
        memory.close()
    code, out, _ = run(capsys, "--db", db, "show", evil)
    assert code == 0
    assert not any(line.lstrip().startswith("state  forgotten") for line in out.splitlines()), out
    assert "a\\x0astate  forgotten" in out
    code, out, _ = run(capsys, "--db", db, "list")
    assert "a\\x0astate  forgotten" in out


def test_a_log_line_stays_one_line_whatever_a_client_puts_in_it() -> None:
    # A request path is percent-decoded before it is logged ('refused GET /%0a...'): a line break in it wrote a
    # second line that reads like one of ours. A traceback keeps its lines.
    import logging

    formatter = cli._TerminalSafeFormatter("%(levelname)s %(name)s: %(message)s")
    forged = "/ui/\n2026-12-04 06:00:00,000 INFO agentcache_mcp: stopped"
    record = logging.LogRecord("agentcache_mcp", logging.WARNING, __file__, 1, "refused GET %s", (forged,), None)
    assert formatter.format(record).count("\n") == 0, formatter.format(record)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys as _sys

        failed = logging.LogRecord("agentcache_mcp", logging.ERROR, __file__, 1, "failed", (), _sys.exc_info())
    assert formatter.format(failed).count("\n") >= 2  # the traceback's lines


# --- show -------------------------------------------------------------------------------------------------


def test_show_prints_every_field(capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path) -> None:
    from agentcache_mcp.server import memory_json

    memory_id = populated["Quarterly report is due on Friday"]
    code, out, err = run(capsys, "--db", db, "show", memory_id)
    assert code == 0 and err == ""
    labels = ["id", "namespace", "text", "tags", "importance", "metadata", "created", "updated"]
    for label in [*labels, "last recalled", "times recalled", "expires", "superseded by", "state"]:
        assert any(line.startswith(label + " ") for line in out.splitlines()), label
    assert "Quarterly report is due on Friday" in out and "work" in out
    code, out, err = run(capsys, "--db", db, "show", memory_id, "--json")
    assert code == 0 and err == ""
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    try:
        found = memory.get(memory_id)
        assert found is not None
        assert json.loads(out) == memory_json(found)  # what the agentcache://memory/{id} resource shows
    finally:
        memory.close()


def test_show_unknown_and_malformed_ids(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    code, out, err = run(capsys, "--db", db, "show", "01JH3X5ZQ8W5V1R7Y0K2M4N6P8")
    assert (code, out) == (1, "")
    assert "no memory with id '01JH3X5ZQ8W5V1R7Y0K2M4N6P8'" in one_error_line(err)
    code, out, err = run(capsys, "--db", db, "show", "alice")
    assert (code, out) == (2, "")
    assert "no memory has the id 'alice' in any namespace" in one_error_line(err)
    code, _, err = run(capsys, "--db", db, "show", "")
    assert code == 2 and one_error_line(err)


def test_show_and_forget_say_what_ids_may_be_an_imported_id_works(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    bob = populated["Bob's birthday is on the 3rd of March"]
    memory.backend.db.write(lambda c: c.execute("UPDATE memories SET id = 'a/b' WHERE id = ?", (bob,)))
    memory.close()
    code, out, _ = run(capsys, "--db", db, "show", "a/b")
    assert code == 0 and "Bob's birthday" in out
    for argv in (["show", "a/c"], ["forget", "a/c"]):
        code, out, err = run(capsys, "--db", db, *argv)
        line = one_error_line(err)
        assert code == 2 and out == ""
        assert "not a memory id" not in line  # it is shaped like one: it names no memory
        assert "no memory has the id 'a/c'" in line and "an imported memory keeps the id it came with" in line


# --- forget -----------------------------------------------------------------------------------------------


def test_forget_by_ids_is_a_dry_run_until_yes(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    bob = populated["Bob's birthday is on the 3rd of March"]
    code, out, err = run(capsys, "--db", db, "forget", bob)
    assert code == 0 and err == ""
    assert bob in out and "Bob's birthday" in out
    assert "would delete 1 memory of namespace 'default'; nothing was deleted" in out and "--yes" in out
    assert bob in stored(db)
    code, out, err = run(capsys, "--db", db, "forget", bob, "--yes")
    assert code == 0 and err == ""
    assert "deleted 1 memory of namespace 'default'" in out
    assert bob not in stored(db) and len(stored(db)) == 6


def test_forget_by_filter_is_a_dry_run_until_yes(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    alice = {populated[t] for t, tags in TEXTS if "alice" in tags}
    code, out, _ = run(capsys, "--db", db, "forget", "--tag", "alice", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["dry_run"] is True and set(data["deleted"]) == alice and data["not_found"] == []
    assert {p["id"] for p in data["previews"]} == alice and all(p["preview"] for p in data["previews"])
    assert alice <= set(stored(db))
    code, out, _ = run(capsys, "--db", db, "forget", "--tag", "alice", "--yes", "--json")
    data = json.loads(out)
    assert code == 0 and data["dry_run"] is False and set(data["deleted"]) == alice
    assert not alice & set(stored(db))


def test_forget_whole_namespace_and_age(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    code, out, _ = run(capsys, "--db", db, "forget", "--older-than-days", "1", "--json")
    assert code == 0 and json.loads(out)["deleted"] == []  # all were written just now
    code, out, _ = run(capsys, "--db", db, "forget", "--namespace", "work")
    assert code == 0 and "would delete 2 memories of namespace 'work'" in out
    code, out, _ = run(capsys, "--db", db, "forget", "--namespace", "work", "--yes")
    assert code == 0 and stored(db, "work") == [] and len(stored(db)) == 5


def test_forget_not_found_ids_fail_after_doing_the_rest(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    bob = populated["Bob's birthday is on the 3rd of March"]
    other = populated["Quarterly report is due on Friday"]  # namespace 'work', not 'default'
    code, out, err = run(capsys, "--db", db, "forget", bob, other, "--yes")
    assert code == 1
    assert "deleted 1 memory" in out
    assert f"not memories of namespace 'default' (nothing was done to them): {other}" in one_error_line(err)
    assert bob not in stored(db) and other in stored(db)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["forget"], "forget needs ids, or a filter: --tag, --older-than-days, or --namespace"),
        (["forget", "01JH3X5ZQ8W5V1R7Y0K2M4N6P8", "--tag", "x"], "either ids or a filter (--tag, --older-than-days)"),
        (["forget", "--older-than-days", "-3"], "--older-than-days must be a positive number of days"),
        (["forget", "--older-than-days", "soon"], "argument --older-than-days: invalid float value: 'soon'"),
        (["forget", "not-an-id"], "no memory has the id 'not-an-id' in any namespace"),
        (["forget", "--tag", "x", "--namespace", "a b"], "invalid namespace 'a b'"),
    ],
)
def test_forget_usage_errors(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, argv: list[str], expected: str
) -> None:
    code, out, err = run(capsys, "--db", db, *argv)
    assert (code, out) == (2, "")
    assert expected in one_error_line(err)
    assert len(stored(db)) == 7


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["forget"], "a filter: --tag, --older-than-days, or --namespace"),
        (["forget", "01JH3X5ZQ8W5V1R7Y0K2M4N6P8", "--older-than-days", "2"], "(--tag, --older-than-days)"),
        (["forget", "--older-than-days", "-3"], "--older-than-days must be a positive number of days"),
        (["forget", "--older-than-days", "1e9"], "--older-than-days must be a positive number of days"),
        (["forget", "--namespace", ""], "--namespace must not be empty"),
        (["forget", "--tag", " "], "--tag must not be empty strings"),
        (["recall", "x", "--limit", "500"], "--limit must be from 1 to 100, got 500"),
        (["recall", "x", "--tag", " "], "--tag must not be empty strings"),
        (["recall", "x", "--namespace", ""], "--namespace must not be empty"),
        (["list", "--tag", " "], "--tag must not be empty strings"),
        (["list", *[f"--tag=t{i}" for i in range(40)]], "--tag: at most 32 tags are allowed"),
    ],
    ids=lambda v: " ".join(v)[:40] if isinstance(v, list) else None,
)
def test_errors_name_the_commands_flags_not_the_tools_arguments(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, argv: list[str], expected: str
) -> None:
    code, out, err = run(capsys, "--db", db, *argv)
    assert (code, out) == (2, "")
    line = one_error_line(err)
    assert expected in line
    assert not re.search(r"(?<![-\w])(older_than_days|tags|limit|namespace) must\b", line)  # the tools' words


def test_forget_on_an_empty_store(capsys: pytest.CaptureFixture[str], empty: Path) -> None:
    code, out, err = run(capsys, "--db", empty, "forget", "--tag", "x", "--yes")
    assert (code, err) == (0, "") and "nothing to delete in namespace 'default'" in out


# --- stats ------------------------------------------------------------------------------------------------


def test_stats_readable_at_a_terminal_json_for_scripts(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(capsys, "--db", db, "stats", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["memories"] == 7 and data["namespaces"] == {"default": 5, "work": 2}
    assert data["pending_embeddings"] == 0 and data["db_path"] == str(db)
    _, piped, _ = run(capsys, "--db", db, "stats")
    assert json.loads(piped)["namespaces"] == data["namespaces"]  # piped: JSON, as stats always printed
    monkeypatch.setattr(console, "stdout_is_tty", lambda: True)
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run(capsys, "--db", db, "stats")
    assert code == 0
    assert "7 in 2 namespaces" in out and str(db) in out and "test-hash-embedder" in out
    assert [line.split() for line in out.splitlines() if line.strip().startswith(("default", "work"))] == [
        ["default", "5"],
        ["work", "2"],
    ]


def test_stats_on_an_empty_store(
    capsys: pytest.CaptureFixture[str], empty: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out, _ = run(capsys, "--db", empty, "stats", "--json")
    assert json.loads(out)["memories"] == 0
    monkeypatch.setattr(console, "stdout_is_tty", lambda: True)
    code, out, err = run(capsys, "--db", empty, "stats")
    assert (code, err) == (0, "") and "0 in 0 namespaces" in out


# --- erase ------------------------------------------------------------------------------------------------


def test_erase_on_a_sqlite_store_says_a_forget_already_erased_and_empties_the_wal(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path
) -> None:
    code, out, err = run(capsys, "--db", db, "erase")
    assert (code, err) == (0, "")
    assert out.startswith("erased: SQLite needs no rewrite: a forget zeroes the deleted bytes at once")
    wal = Path(str(db) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    code, out, _ = run(capsys, "--db", db, "erase", "--json")
    assert code == 0 and json.loads(out)["erased"] is True


# --- reembed ----------------------------------------------------------------------------------------------


def test_reembed_switches_model_and_is_resumable(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    original = FakeModel.embed

    def embed_then_interrupt(self: FakeModel, texts: list[str]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return original(self, texts)

    monkeypatch.setattr(FakeModel, "embed", embed_then_interrupt)
    checked = cli._checked_settings
    monkeypatch.setattr(  # batches of two memories
        cli, "_checked_settings", lambda *a: checked(*a).model_copy(update={"embed_batch_size": 2})
    )

    code, out, err = run(capsys, "--db", db, "reembed", "--model", OTHER_MODEL)
    assert code == 130 and out == ""
    line = one_error_line(err)
    assert "interrupted: 3 memories still to embed with other-test-model" in line and "run the same command" in line

    monkeypatch.setattr(FakeModel, "embed", original)
    code, out, err = run(capsys, "--db", db, "reembed", "--model", OTHER_MODEL)
    assert code == 0 and err == ""
    assert "embedded 3 memories with other-test-model" in out  # only what the first run left
    assert "AGENTCACHE_EMBEDDING_MODEL=other-test-model" in out

    code, out, _ = run(capsys, "--db", db, "reembed", "--model", OTHER_MODEL, "--json")
    data = json.loads(out)
    assert data == {
        "model": OTHER_MODEL,
        "memories": 7,
        "embedded": 0,
        "already_embedded": 7,
        "pending": 0,
        "servers_use": DEFAULT_MODEL,
    }
    # the new model's vectors are searchable, the old model's are kept
    for model in (OTHER_MODEL, DEFAULT_MODEL):
        memory = open_memory(Settings(db_path=db), embedder=FakeModel(model))
        try:
            assert memory.pending_embeddings() == 0
            assert memory.load_vectors() == 7
        finally:
            memory.close()


def test_reembed_with_the_configured_model(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "--db", db, "reembed")
    assert code == 0 and "all 7 memories already have a vector from test-hash-embedder: nothing to do" in out
    assert "AGENTCACHE_EMBEDDING_MODEL" not in out
    assert all(m.loads == 0 for m in FakeModel.made)  # nothing to embed: no model load
    monkeypatch.setenv("AGENTCACHE_EMBEDDING_MODEL", OTHER_MODEL)
    code, out, _ = run(capsys, "--db", db, "reembed")
    assert code == 0 and "embedded 7 memories with other-test-model" in out
    assert "AGENTCACHE_EMBEDDING_MODEL" not in out  # servers already use it


def test_reembed_a_model_that_cannot_load(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.embeddings import EmbeddingModelError

    class Missing(FakeModel):
        def load(self) -> None:
            raise EmbeddingModelError("cannot load embedding model 'nope': not found\nsecond line of detail")

    monkeypatch.setattr(app, "SentenceTransformerEmbedder", Missing)
    code, out, err = run(capsys, "--db", db, "reembed", "--model", "nope")
    assert (code, out) == (1, "")
    assert "cannot load embedding model 'nope': not found second line of detail" in one_error_line(err)


def test_reembed_on_an_empty_store(capsys: pytest.CaptureFixture[str], empty: Path) -> None:
    code, out, err = run(capsys, "--db", empty, "reembed", "--model", OTHER_MODEL)
    assert (code, err) == (0, "") and "the store has no memories: nothing to embed" in out


# --- backup -----------------------------------------------------------------------------------------------


def test_backup_copies_and_verifies(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "copy.db"
    code, out, err = run(capsys, "--db", db, "backup", dest)
    assert code == 0 and err == ""
    assert f"backed up {db} to {dest} (7 memories," in out and "integrity_check of the copy: ok" in out
    assert sorted(stored(dest)) == sorted(stored(db))
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]

    code, out, err = run(capsys, "--db", db, "backup", dest)  # refuses to overwrite
    assert (code, out) == (1, "")
    assert "already exists: name another file, or use --force" in one_error_line(err)
    code, out, err = run(capsys, "backup", dest, "--force", "--json", "--db", db)
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["memories"] == 7 and data["integrity_check"] == "ok" and data["dest"] == str(dest)


def test_backup_of_an_empty_store(capsys: pytest.CaptureFixture[str], empty: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "--db", empty, "backup", tmp_path / "b.db", "--json")
    assert (code, err) == (0, "") and json.loads(out)["memories"] == 0


@pytest.mark.parametrize(
    ("dest", "code", "expected"),
    [
        ("{tmp}", 2, "is a directory: name the backup file"),
        ("{tmp}/missing/b.db", 2, "does not exist"),
        ("{db}", 2, "is the database itself"),
    ],
)
def test_backup_refusals(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, tmp_path: Path, dest: str, code: int,
    expected: str,
) -> None:  # fmt: skip
    got, out, err = run(capsys, "--db", db, "backup", dest.replace("{tmp}", str(tmp_path)).replace("{db}", str(db)))
    assert (got, out) == (code, "")
    assert expected in one_error_line(err)


def test_backup_of_a_postgresql_store_says_what_to_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "--db", "postgresql://me:secret@db.example/memories", "backup", tmp_path / "b")
    assert (code, out) == (1, "")
    line = one_error_line(err)
    assert "pg_dump" in line and "secret" not in line


def test_backup_of_a_file_that_is_not_sqlite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("just text")
    code, _, err = run(capsys, "--db", notes, "backup", tmp_path / "b.db")
    assert code == 1 and "is not a SQLite database" in one_error_line(err)
    assert not (tmp_path / "b.db").exists()


def test_backup_reports_a_copy_that_fails_integrity_check(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def broken(copy: Path) -> str:
        raise backup_module.BackupError(
            "the copy failed integrity_check (row 3 missing from index); nothing was written"
        )

    monkeypatch.setattr(backup_module, "_verify", broken)
    code, out, err = run(capsys, "--db", db, "backup", tmp_path / "b.db")
    assert (code, out) == (1, "") and "failed integrity_check" in one_error_line(err)
    assert not [p.name for p in tmp_path.iterdir() if "b.db" in p.name]  # neither the copy nor its temporary


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from agentcache_mcp.app import open_memory
    from agentcache_mcp.config import Settings
    from conftest import HashEmbedder
    memory = open_memory(Settings(db_path=Path(sys.argv[1])), embedder=HashEmbedder())
    stop = Path(sys.argv[3])
    n = 0
    while not stop.exists():
        last = memory.remember(f"written during the backup {n} " + "padding " * 150, namespace="live").id
        memory.embed_pending()
        if n % 7 == 6:
            memory.forget([last], namespace="live")  # deletes too, not only inserts
        n += 1
        if n == 1:
            print("started", flush=True)
    memory.close()
    print(n, flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["process", "thread"])
def test_backup_while_the_store_is_written(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    for i in range(400):
        memory.remember(f"memory {i} " + "filler words " * 80, namespace="old")
    memory.embed_pending()
    memory.close()
    monkeypatch.setattr(backup_module, "STEP_PAGES", 4)  # many steps, so writes land between them
    steps: list[int] = []
    # The newest key handed out (sqlite_sequence: keys increase and are never reused, so unlike a count of
    # rows it does not go down when the process writer forgets one), at the first and at the last step.
    live_during: list[int] = []
    real_backup = backup_module.backup_sqlite

    def newest_key(path: Path) -> int:
        peek = sqlean.connect(str(path))
        try:
            return int(peek.execute("SELECT seq FROM sqlite_sequence WHERE name = 'memories'").fetchone()[0])
        finally:
            peek.close()

    def live_now() -> int:
        return newest_key(db)

    def slow_backup(*args: Any, progress: Any = None, **kwargs: Any) -> Any:
        def each_step(done: int, total: int) -> None:
            steps.append(done)
            if len(steps) == 1 or done == total:
                live_during.append(live_now())
            time.sleep(0.002)  # give the writer time between steps

        return real_backup(*args, progress=each_step, **kwargs)

    monkeypatch.setattr(backup_module, "backup_sqlite", slow_backup)
    stop = tmp_path / "stop"
    dest = tmp_path / "copy.db"
    if writer == "process":
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(Path(__file__).parent), str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    else:
        written = [0]

        def write() -> None:
            other = open_memory(Settings(db_path=db), embedder=HashEmbedder())
            try:
                while not stop.exists():
                    other.remember(f"written during the backup {written[0]} " + "padding " * 150, namespace="live")
                    other.embed_pending()
                    written[0] += 1
            finally:
                other.close()

        thread = threading.Thread(target=write)
        thread.start()
        while not written[0]:
            time.sleep(0.01)
    before = newest_key(db)
    try:
        code, out, err = run(capsys, "--db", db, "backup", dest, "--json")
    finally:
        stop.touch()
        if writer == "process":
            out_writer, _ = proc.communicate(timeout=60)
            assert int(out_writer.strip()) > 0
        else:
            thread.join(timeout=60)
            assert written[0] > 0
    after = newest_key(db)
    assert code == 0, err
    data = json.loads(out)
    assert data["integrity_check"] == "ok" and len(steps) > 10
    assert live_during[-1] > live_during[0]  # the writer wrote while the backup was copying
    check = sqlean.connect(str(dest))
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert check.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        copied = check.execute("SELECT count(*) FROM memories").fetchone()[0]
    finally:
        check.close()
    assert copied == data["memories"]
    assert before <= newest_key(dest) <= live_during[0] < after  # one snapshot, taken by the first step

    # and the copy is a working store: every memory found, keyword index intact
    restored = open_memory(Settings(db_path=dest), embedder=HashEmbedder())
    try:
        assert restored.verify_index(rebuild=False).fts_rebuilt is False and restored.keyword_index_ok
        assert restored.recall("memory 123 filler", namespace="old", limit=1)[0].text.startswith("memory 123 ")
    finally:
        restored.close()


# --- export and import ------------------------------------------------------------------------------------


@pytest.fixture
def exchange() -> Any:
    return pytest.importorskip("agentcache_mcp.memory.exchange", reason="the export/import module is not written yet")


def test_export_to_stdout_and_import_into_a_fresh_store(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, tmp_path: Path, exchange: Any
) -> None:
    code, out, err = run(capsys, "--db", db, "export", "--with-vectors")
    assert code == 0 and err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["format"] == "agentcache-export" and len(lines) == 8
    assert {m["id"] for m in lines[1:]} == set(populated.values())
    dump = tmp_path / "dump.jsonl"
    dump.write_text(out, encoding="utf-8")

    fresh = tmp_path / "fresh.db"
    code, out, err = run(capsys, "--db", fresh, "import", dump, "--dry-run")
    assert code == 0 and err == ""
    assert "dry run: would add 7 memories and skip 0 already in the store; nothing was written" in out
    assert not fresh.exists()  # a dry run writes nothing, not even an empty database

    code, out, err = run(capsys, "--db", fresh, "import", dump, "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["format"] == "agentcache-export" and report["applied"] is True
    assert (report["added"], report["skipped_existing"], report["invalid"]) == (7, 0, [])
    assert report["pending_embeddings"] == 0  # the vectors came along
    assert sorted(stored(fresh)) == sorted(stored(db))

    code, out, _ = run(capsys, "--db", fresh, "import", dump)
    assert code == 0 and "added 0 memories; skipped 7 already in the store" in out


def test_export_to_a_file_by_namespace(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, tmp_path: Path, exchange: Any
) -> None:
    target = tmp_path / "work.jsonl"
    code, out, err = run(capsys, "export", "--db", db, "--namespace", "work", "-o", target)
    assert code == 0 and err == ""
    assert f"exported 2 memories (namespace work) to {target}" in out
    records = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()[1:]]
    assert {r["namespace"] for r in records} == {"work"} and len(records) == 2
    assert "vector" not in records[0]
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []


def test_export_of_an_empty_store(capsys: pytest.CaptureFixture[str], empty: Path, exchange: Any) -> None:
    code, out, err = run(capsys, "--db", empty, "export")
    assert (code, err) == (0, "")
    assert [json.loads(line)["format"] for line in out.splitlines()] == ["agentcache-export"]
    code, out, err = run(capsys, "--db", empty, "export", "--namespace", "nothing-here", "-o", empty.parent / "x")
    assert code == 0 and "exported 0 memories" in out
    assert one_error_line(err).endswith("namespace 'nothing-here' has no memories")


def test_import_with_a_bad_line_applies_nothing_unless_skip_invalid(
    capsys: pytest.CaptureFixture[str], empty: Path, tmp_path: Path, exchange: Any
) -> None:
    graph = tmp_path / "memory.jsonl"
    graph.write_text(
        "\n".join(
            [
                '{"type":"entity","name":"Alice","entityType":"person","observations":["Prefers tea"]}',
                '{"type":"entity","name":"Bob"',
                '{"type":"relation","from":"Alice","to":"Bob","relationType":"mentors"}',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    code, out, err = run(capsys, "--db", empty, "import", graph)
    assert (code, out) == (1, "")
    line = one_error_line(err)
    assert line.startswith("agentcache-mcp: import refused: ") and "line 2" in line
    assert stored(empty) == []

    code, out, err = run(capsys, "--db", empty, "import", graph, "--skip-invalid", "--namespace", "team")
    assert code == 0 and err == ""
    assert "official-memory-jsonl" in out and "added 2 memories" in out
    assert any(row.split()[:1] == ["2"] for row in out.splitlines())  # the skipped line is listed
    assert len(stored(empty, "team")) == 2
    assert "2 wait for a vector from test-hash-embedder" in out


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["import", "{tmp}/nope.jsonl"], 2, "no such file"),
        (["import", "{tmp}/f.jsonl", "--namespace", "a/b"], 2, "invalid namespace 'a/b'"),
        (["import", "{tmp}/f.jsonl"], 1, "import refused: "),
        (["export", "--namespace", "a b"], 2, "invalid namespace 'a b'"),
        (["export", "-o", "{tmp}/missing/x.jsonl"], 2, "is in a directory that does not exist"),
    ],
)
def test_export_import_errors(
    capsys: pytest.CaptureFixture[str], empty: Path, tmp_path: Path, exchange: Any, argv: list[str], code: int,
    expected: str,
) -> None:  # fmt: skip
    (tmp_path / "f.jsonl").write_text("this is not an export\n")
    got, out, err = run(capsys, "--db", empty, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert (got, out) == (code, "")
    assert expected in one_error_line(err)


# --- exit codes, one-line errors, quiet stderr, progress at a terminal ------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["recall"], "the following arguments are required: query"),
        (["recall", "x", "--limit", "many"], "argument --limit: invalid int value: 'many'"),
        (["recall", "x", "--limit", "0"], "limit must be from 1 to 100, got 0"),
        (["recall", "x", "--namespace", "a/b"], "invalid namespace 'a/b'"),
        (["recall", " "], "query must not be empty"),
        (["list", "--limit", "0"], "--limit must be at least 1, got 0"),
        (["list", "--bogus"], "unrecognized arguments: --bogus"),
        (["show"], "the following arguments are required: id"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["reembed", "--model", " "], "--model must name a sentence-transformers model"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, argv: list[str], expected: str
) -> None:
    code, out, err = run(capsys, "--db", db, *argv)
    assert (code, out) == (2, "")
    assert expected in one_error_line(err)


def test_an_unusable_store_fails_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)
    for argv in (["list"], ["recall", "x"], ["stats"]):
        code, out, err = run(capsys, "--db", broken, *argv)
        assert (code, out) == (1, ""), argv
        assert "cannot use the memory database" in one_error_line(err)


def test_settings_are_checked_first(capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("AGENTCACHE_NAMESPACE", "a b")
    code, out, err = run(capsys, "--db", db, "list")
    assert (code, out) == (2, "")
    assert "invalid configuration: AGENTCACHE_NAMESPACE 'a b' is invalid" in one_error_line(err)
    monkeypatch.setenv("AGENTCACHE_NAMESPACE", "work")  # and the configured namespace is the default
    _, out, _ = run(capsys, "--db", db, "list", "--json")
    assert json.loads(out)["namespace"] == "work"


@pytest.mark.slow
def test_logs_are_quiet_unless_a_log_level_is_given(tmp_path: Path) -> None:
    """A person at a terminal gets the result, not INFO lines (creating a store logs its migrations)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}

    def stderr_of(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "agentcache_mcp", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        json.loads(done.stdout)
        return done.stderr

    assert stderr_of("stats", "--db", str(tmp_path / "a.db")) == ""
    assert "applied schema migration" in stderr_of("--log-level", "info", "stats", "--db", str(tmp_path / "b.db"))
    assert "applied schema migration" in stderr_of("stats", "--db", str(tmp_path / "c.db"), "--log-level", "INFO")


def test_progress_bars_only_at_a_terminal(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    code, _, err = run(capsys, "--db", db, "backup", tmp_path / "a.db")
    assert code == 0 and err == ""
    monkeypatch.setattr(console, "stderr_is_tty", lambda: True)
    code, out, _ = run(capsys, "--db", db, "backup", tmp_path / "b.db", "--json")
    assert code == 0 and json.loads(out)["integrity_check"] == "ok"  # stdout still only the JSON
    code, out, _ = run(capsys, "--db", db, "reembed", "--model", OTHER_MODEL, "--json")
    assert code == 0 and json.loads(out)["embedded"] == 7
    pytest.importorskip("agentcache_mcp.memory.exchange", reason="the export module is not written yet")
    code, out, _ = run(capsys, "--db", db, "export")
    assert code == 0 and len(out.splitlines()) == 8  # the bar went to stderr, not into the export


def test_json_goes_out_as_ascii_where_stdout_is_not_utf8(
    capsys: pytest.CaptureFixture[str], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    memory.remember("Zoë likes crème brûlée")
    memory.close()
    _, out, _ = run(capsys, "--db", db, "list", "--json")
    assert "Zoë" in out  # UTF-8 stdout: as it is
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    cli.main(["--db", str(db), "list", "--json"])
    ascii_out.flush()
    raw = ascii_out.buffer.getvalue().decode("ascii")  # type: ignore[attr-defined]
    assert "Zo\\u00eb" in raw and json.loads(raw)["memories"][0]["text"] == "Zoë likes crème brûlée"


# --- with the real model ----------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.slow
def test_reembed_then_recall_with_the_bundled_model(
    capsys: pytest.CaptureFixture[str], populated: dict[str, str], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.embeddings import SentenceTransformerEmbedder

    monkeypatch.setattr(app, "SentenceTransformerEmbedder", SentenceTransformerEmbedder)
    code, out, err = run(capsys, "--db", db, "reembed")
    assert code == 0, err
    assert "embedded 7 memories with all-MiniLM-L6-v2@" in out
    code, out, err = run(capsys, "--db", db, "recall", "what", "text", "editor", "is", "used", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["retrieval"] == "hybrid" and data["retrieval_note"] is None
    assert data["results"][0]["id"] == populated["Alice uses Neovim with the gruvbox theme"]
