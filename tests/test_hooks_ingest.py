"""Storing a session's durable memories from its transcript: hooks/ingest.py, the hook and the CLI command."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from secret_samples import SAMPLES
from test_cli_commands import run

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import ConfigError, Settings
from agentcache_mcp.hooks.ingest import DEFAULT_LIMIT, STATE_PREFIX, ingest_transcript, run_hook, state_name
from agentcache_mcp.memory.fusion import FusionParams
from agentcache_mcp.memory.model import Memory
from agentcache_mcp.memory.service import MemoryService

from conftest import HashEmbedder

FIXTURES = Path(__file__).parent / "fixtures" / "transcripts"
MIXED = FIXTURES / "session_mixed.jsonl"
SESSION = "5f0c2a7e-1b3d-4c8e-9a6f-2d7b1e4c9a01"
NS = "git:example.org:acme:widgets"
KEYWORD = FusionParams(method="keyword")


def _entry(n: int, text: str, session: str = "s-1") -> str:
    return json.dumps(
        {
            "type": "user",
            "uuid": f"u-{n}",
            "sessionId": session,
            "cwd": "/tmp/somewhere",
            "message": {"role": "user", "content": text},
        }
    ) + "\n"


def _stored(memory: MemoryService, namespace: str = NS) -> list[Memory]:
    return memory.backend.memories.recent(namespace, 1000)


def _keyword(memory: MemoryService, query: str) -> list[str]:
    return [h.text for h in memory.recall(query, NS, fusion=KEYWORD, touch=False)]


@pytest.fixture
def memory(settings: Settings) -> Iterator[MemoryService]:
    opened = open_memory(settings, embedder=HashEmbedder())
    yield opened
    opened.close()


def test_a_transcripts_durable_statements_are_stored_tagged_and_found_by_keyword(memory: MemoryService) -> None:
    report = ingest_transcript(memory, MIXED, namespace=NS)
    stored = _stored(memory)
    assert len(stored) == len(report.added) >= 5
    for m in stored:
        assert m.tags[0] == "captured" and m.tags[1] in ("decision", "preference", "convention", "fix", "fact")
        assert m.metadata["source"] == "claude-code" and m.metadata["session_id"] == SESSION
        assert str(m.metadata["message_uuid"]).startswith("00000000-0000-4000-8000-")
        assert 30 <= len(m.text) <= 400
    assert any("Redis instead of Memcached" in t for t in _keyword(memory, "Redis Memcached session cache"))
    assert any("small focused commits" in t for t in _keyword(memory, "commits"))
    assert memory.pending_embeddings() == len(stored)  # stored without a vector: no model was loaded
    assert report.notes[0].startswith("line 16: not valid JSON")


def test_ingesting_the_same_transcript_twice_or_a_copy_of_it_adds_nothing(memory: MemoryService, tmp_path: Path) -> None:
    first = ingest_transcript(memory, MIXED, namespace=NS)
    again = ingest_transcript(memory, MIXED, namespace=NS)
    assert first.added and again.added == [] and again.selected == []
    copy = tmp_path / "copy-of-session.jsonl"
    shutil.copy(MIXED, copy)
    assert ingest_transcript(memory, copy, namespace=NS).selected == []  # the same session: read up to its end
    from_copy = ingest_transcript(memory, copy, namespace=NS, session_id="other")  # no state: read it all again
    assert from_copy.added == [] and from_copy.already_stored == len(first.added)
    assert len(_stored(memory)) == len(first.added)


def test_a_growing_transcript_adds_only_what_was_appended_and_skips_what_was_read(
    memory: MemoryService, tmp_path: Path
) -> None:
    path = tmp_path / "a3b1c2d4-0000-4000-8000-00000000abcd.jsonl"
    path.write_text(_entry(1, "We decided to use Redis instead of Memcached for the session cache."))
    assert len(ingest_transcript(memory, path, namespace=NS).added) == 1  # PreCompact
    with open(path, "a") as f:
        f.write(_entry(2, "thanks, that looks right to me"))
        f.write(_entry(3, "I prefer small focused commits over one big commit at the end of a task."))
    later = ingest_transcript(memory, path, namespace=NS)  # SessionEnd
    assert (later.from_line, later.to_line) == (2, 3)
    assert [c.text for _, c in later.added] == ["I prefer small focused commits over one big commit at the end of a task."]
    assert len(_stored(memory)) == 2


def test_at_most_limit_memories_per_session_across_runs(memory: MemoryService, tmp_path: Path) -> None:
    path = tmp_path / "session.jsonl"
    tools = ["Redis", "Kafka", "Postgres", "Nginx", "Celery", "Ruff", "Poetry", "Vite", "Hugo", "Caddy", "Bun", "Deno"]
    path.write_text("".join(_entry(n, f"We decided to use {t} instead of the old tool for module {n}.") for n, t in enumerate(tools)))
    first = ingest_transcript(memory, path, namespace=NS, session_id="s-1")
    assert len(first.added) == DEFAULT_LIMIT
    with open(path, "a") as f:
        f.write(_entry(99, "Never run the database migrations from a laptop; the pipeline runs them."))
    second = ingest_transcript(memory, path, namespace=NS, session_id="s-1")
    assert second.added == [] and second.used_before == DEFAULT_LIMIT
    assert len(_stored(memory)) == DEFAULT_LIMIT
    other = ingest_transcript(memory, path, namespace=NS, session_id="s-2", limit=3)  # another session's own limit
    assert len(other.selected) == 3 and other.added == [] and other.already_stored == 3


def test_a_transcript_rewritten_before_where_it_was_read_is_read_again_from_its_start(
    memory: MemoryService, tmp_path: Path
) -> None:
    path = tmp_path / "session.jsonl"
    path.write_text(_entry(1, "We decided to use Redis instead of Memcached for the session cache."))
    ingest_transcript(memory, path, namespace=NS, session_id="s")
    path.write_text(_entry(1, "In this repo we keep every migration under db/migrations, never elsewhere."))
    report = ingest_transcript(memory, path, namespace=NS, session_id="s")
    assert report.notes == ["the transcript changed before where it was last read: read again from its start"]
    assert [c.text for _, c in report.added] == ["In this repo we keep every migration under db/migrations, never elsewhere."]


def test_a_memory_already_in_the_namespace_is_not_stored_again_nor_changed(memory: MemoryService) -> None:
    kept = memory.remember("we decided to use redis INSTEAD of memcached for the session cache, because we need persistence across restarts.", NS, tags=["mine"])
    report = ingest_transcript(memory, MIXED, namespace=NS)
    assert report.already_stored == 1
    [mine] = memory.backend.memories.get(NS, [kept.id])
    assert mine.tags == ["mine"] and mine.metadata == {}


def test_a_dry_run_writes_nothing(memory: MemoryService) -> None:
    report = ingest_transcript(memory, MIXED, namespace=NS, dry_run=True)
    assert report.added and all(i == "" for i, _ in report.added)
    assert _stored(memory) == []
    assert memory.backend.memories.get_setting(state_name(NS, SESSION)) is None


def test_the_kept_state_is_offsets_and_counts_only(memory: MemoryService) -> None:
    ingest_transcript(memory, MIXED, namespace=NS)
    state = json.loads(memory.backend.memories.get_setting(state_name(NS, SESSION)) or "{}")
    assert set(state) == {"v", "offset", "line", "taken", "tail", "private"}
    assert state["line"] == 27 and state["offset"] < MIXED.stat().st_size  # the truncated last line: read again
    assert state_name(NS, SESSION).startswith(STATE_PREFIX)


# the hook and the command


def _git_project(root: Path) -> Path:
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "config").write_text('[remote "origin"]\n\turl = git@example.org:acme/widgets.git\n')
    return root


def test_the_hook_stores_into_the_projects_namespace_without_loading_the_model(tmp_path: Path) -> None:
    project = _git_project(tmp_path / "widgets")
    db = tmp_path / "memory.db"
    payload = {
        "session_id": SESSION,
        "transcript_path": str(MIXED),
        "cwd": str(project),
        "hook_event_name": "SessionEnd",
        "reason": "exit",
    }
    code = (
        "import json, sys; from agentcache_mcp.hooks.ingest import run_hook; run_hook(json.loads(sys.argv[1])); "
        "print(json.dumps(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules)))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCACHE_")}
    repo = str(Path(__file__).parent.parent)
    env.update(AGENTCACHE_DB=str(db), PYTHONPATH=os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(payload)], env=env, capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    try:
        stored = _stored(memory, NS)
        assert len(stored) >= 5 and all(m.metadata["session_id"] == SESSION for m in stored)
    finally:
        memory.close()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"session_id": "s", "hook_event_name": "Stop"}, ValueError),
        ({"transcript_path": "/nonexistent/t.jsonl", "hook_event_name": "Stop"}, FileNotFoundError),
    ],
)
def test_the_hook_raises_on_input_it_cannot_use(payload: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        run_hook(payload)


def test_the_command_ingests_then_adds_nothing_the_second_time(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    code, out, err = run(capsys, "ingest-transcript", MIXED, "--db", db, "--namespace", "work", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["namespace"] == "work" and len(first["added"]) >= 5
    assert first["notes"][0].startswith("line 16: not valid JSON")
    code, out, _ = run(capsys, "ingest-transcript", MIXED, "--db", db, "--namespace", "work", "--json")
    assert code == 0 and json.loads(out)["added"] == []
    code, out, _ = run(capsys, "list", "--db", db, "--namespace", "work", "--tag", "captured", "--json")
    assert len(json.loads(out)["memories"]) == len(first["added"])


def test_the_command_defaults_to_the_namespace_of_the_sessions_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    project = _git_project(tmp_path / "widgets")
    transcript = tmp_path / "t.jsonl"
    transcript.write_text(MIXED.read_text().replace("/home/dev/widgets", str(project)))
    code, out, err = run(capsys, "ingest-transcript", transcript, "--db", tmp_path / "m.db", "--dry-run")
    assert code == 0, err
    assert "would add" in out and NS in out
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "0"], "--limit must be at least 1"),
        (["--namespace", "bad namespace!"], "--namespace"),
    ],
)
def test_the_command_refuses_bad_flags_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "ingest-transcript", MIXED, "--db", tmp_path / "m.db", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_command_refuses_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "ingest-transcript", tmp_path / "nope.jsonl", "--db", tmp_path / "m.db")
    assert code == 2 and "nope.jsonl" in err


# PostgreSQL


def test_ingesting_into_postgresql_is_idempotent_too(postgres_url: str) -> None:
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    try:
        first = ingest_transcript(memory, MIXED, namespace=NS)
        again = ingest_transcript(memory, MIXED, namespace=NS)
        assert len(first.added) >= 5 and again.added == []
        assert len(_stored(memory)) == len(first.added)
        assert any("Redis instead of Memcached" in t for t in _keyword(memory, "Redis Memcached"))
    finally:
        memory.close()


# secrets and private text


PRIVATE = "Xylophone-quartz-harbour"


def _secret_transcript(path: Path) -> None:
    """A session whose durable statements carry every planted secret (tests/secret_samples.py), in every shape
    a transcript has: the human's text, the assistant's prose, thinking, tool calls and results, private spans."""
    lines: list[str] = []

    def add(entry: dict[str, object]) -> None:
        lines.append(json.dumps({"sessionId": "sec-session", "uuid": f"m-{len(lines)}", **entry}) + "\n")

    for sample in SAMPLES:
        add({"type": "user", "message": {"role": "user", "content": f"We decided to keep {sample.text} for the deploy job."}})
        add({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": f"Our staging server uses {sample.text} always."}]}})
        add({"type": "assistant", "message": {"role": "assistant", "content": [
            {"type": "thinking", "thinking": f"The root cause was {sample.text}."},
            {"type": "text", "text": f"The root cause was that {sample.text} had expired in the config."},
            {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": sample.text}},
        ]}})
        add({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": f"We decided the root cause was {sample.text}"},
        ]}})
    add({"type": "user", "message": {"role": "user", "content": f"We decided to use Redis instead of Memcached <private>because of {PRIVATE}</private> for the session cache."}})
    add({"type": "user", "message": {"role": "user", "content": f"<private>We decided to tell nobody about {PRIVATE} and never write it down.</private>"}})
    add({"type": "user", "message": {"role": "user", "content": f"We decided to move the cache to Redis. <PRIVATE>We decided on {PRIVATE} too."}})
    path.write_text("".join(lines))


def _store_files(db: Path) -> list[Path]:
    return [p for p in db.parent.iterdir() if p.name.startswith(db.name)]


def test_no_planted_secret_or_private_text_reaches_the_store_or_its_files(tmp_path: Path) -> None:
    transcript = tmp_path / "session" / "transcript.jsonl"
    transcript.parent.mkdir()
    _secret_transcript(transcript)
    db = tmp_path / "store" / "memory.db"
    db.parent.mkdir()
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    try:
        report = ingest_transcript(memory, transcript, namespace=NS, limit=10_000)
        texts = [m.text for m in _stored(memory)]
    finally:
        memory.close()
    assert any(t.startswith("We decided to use Redis instead of Memcached") for t in texts)  # without its private part
    assert any(t == "We decided to move the cache to Redis." for t in texts)
    files = _store_files(db)
    assert db in files
    contents = [f.read_bytes() for f in files]
    for sample in SAMPLES:
        needles = [sample.secret, *(line for line in sample.secret.splitlines() if len(line) >= 16 and "-----" not in line)]
        for needle in needles:
            assert not any(needle in t for t in texts), sample.kind
            assert not any(needle.encode() in content for content in contents), sample.kind
    assert not any(PRIVATE in t or "nobody" in t for t in texts)
    assert not any(PRIVATE.encode() in content for content in contents)
    assert sum("[redacted " in t for t in texts) >= len(SAMPLES)  # statements kept, their secrets redacted
    assert len(report.added) == len(texts)


def test_nul_characters_lone_surrogates_and_a_byte_order_mark_do_not_stop_an_ingest(
    memory: MemoryService, tmp_path: Path
) -> None:
    path = tmp_path / "odd.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\ufeff" + _entry(1, "We decided to use Redis instead of Memcached for the session cache."))
        f.write(_entry(2, "We decided to keep\u0000 the old endpoint alive until the third quarter ends."))
        f.write(_entry(3, "We decided to name the queue \ud800jobs and never rename it again later."))
        f.write(json.dumps({"type": "user", "uuid": "u-\u0000", "sessionId": "s\ud800", "message": {"role": "user", "content": "I prefer small focused commits over one big commit at the end."}}) + "\n")
    report = ingest_transcript(memory, path, namespace=NS)
    assert report.notes == []
    texts = sorted(m.text for m in _stored(memory))
    assert len(texts) == 4
    assert "We decided to keep the old endpoint alive until the third quarter ends." in texts
    assert all("\x00" not in t for t in texts)


def _hook_payload(project: Path) -> dict[str, object]:
    return {"session_id": SESSION, "transcript_path": str(MIXED), "cwd": str(project), "hook_event_name": "Stop"}


def test_the_capture_limit_variable_bounds_what_the_hook_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _git_project(tmp_path / "widgets")
    db = tmp_path / "memory.db"
    monkeypatch.setenv("AGENTCACHE_DB", str(db))
    monkeypatch.setenv("AGENTCACHE_CAPTURE_LIMIT", "2")
    run_hook(_hook_payload(project))
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    try:
        assert len(_stored(memory, NS)) == 2
    finally:
        memory.close()


def test_a_capture_limit_of_zero_turns_the_hook_off_without_opening_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _git_project(tmp_path / "widgets")
    db = tmp_path / "memory.db"
    monkeypatch.setenv("AGENTCACHE_DB", str(db))
    monkeypatch.setenv("AGENTCACHE_CAPTURE_LIMIT", "0")
    run_hook(_hook_payload(project))
    assert not db.exists()


def test_a_capture_limit_that_is_not_a_count_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTCACHE_DB", str(tmp_path / "memory.db"))
    monkeypatch.setenv("AGENTCACHE_CAPTURE_LIMIT", "-1")
    with pytest.raises(ConfigError, match="AGENTCACHE_CAPTURE_LIMIT"):
        run_hook(_hook_payload(_git_project(tmp_path / "widgets")))


# a <private> span across messages (review of issue 21)

_SPAN = [
    ("user", "We decided to use Redis instead of Memcached for the session cache. <private>We decided the vault is Vault-A1."),
    ("user", "We decided the staging cluster is Ember-B2 and nobody else may know it."),
    ("assistant", "The root cause was Ember-B2 rejecting the old certificate in the config."),
    ("user", "We decided on Cobalt-C3 as the fallback. </private> We decided to keep Postgres instead of MySQL for billing."),
]


def _span_transcript(path: Path, upto: int) -> None:
    lines = []
    for n, (role, text) in enumerate(_SPAN[:upto]):
        lines.append(json.dumps({"type": role, "uuid": f"p-{n}", "sessionId": "span", "message": {"role": role, "content": text}}) + "\n")
    path.write_text("".join(lines))


@pytest.mark.parametrize("runs", [[4], [1, 2, 3, 4]], ids=["one-read", "one-read-per-turn"])
def test_a_private_span_opened_in_one_message_hides_every_message_until_it_is_closed(
    memory: MemoryService, tmp_path: Path, runs: list[int]
) -> None:
    transcript = tmp_path / "span.jsonl"
    for upto in runs:  # as the Stop hook reads it: a turn at a time
        _span_transcript(transcript, upto)
        ingest_transcript(memory, transcript, namespace=NS)
    texts = [m.text for m in _stored(memory)]
    assert not any(word in t for t in texts for word in ("Vault-A1", "Ember-B2", "Cobalt-C3")), texts
    assert "We decided to use Redis instead of Memcached for the session cache." in texts
    assert "We decided to keep Postgres instead of MySQL for billing." in texts


def test_a_transcript_path_that_is_a_fifo_is_refused_at_once_not_waited_on(memory: MemoryService, tmp_path: Path) -> None:
    """The hook checks transcript_path is a file, but what is opened a moment later may be a FIFO by then: the
    read itself refuses anything but a regular file, without blocking for a writer."""
    import threading

    fifo = tmp_path / "session.jsonl"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            ingest_transcript(memory, fifo, namespace=NS, session_id="s-fifo")
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=ingest, daemon=True)
    worker.start()
    worker.join(20)
    try:
        assert not worker.is_alive(), "the ingest blocked on a FIFO"
        assert len(errors) == 1 and isinstance(errors[0], OSError) and "not a regular file" in str(errors[0])
    finally:
        with contextlib.suppress(OSError):  # releases a reader still blocked in open()
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(20)
