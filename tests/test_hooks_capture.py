"""Reading Claude Code transcripts (hooks/transcript.py) and picking their durable statements (hooks/capture.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentcache_mcp.hooks.capture import MAX_CHARS, MIN_CHARS, Candidate, candidates_in, classify, durable_candidates
from agentcache_mcp.hooks.transcript import MAX_LINE_BYTES, Message, read_transcript, read_transcript_part

FIXTURES = Path(__file__).parent / "fixtures" / "transcripts"
MIXED = FIXTURES / "session_mixed.jsonl"


def _line(entry: dict[str, object]) -> str:
    return json.dumps(entry) + "\n"


def _user(text: object, uuid: str = "u1", **extra: object) -> dict[str, object]:
    return {"type": "user", "uuid": uuid, "sessionId": "s1", "message": {"role": "user", "content": text}, **extra}


# reading


def test_a_mixed_transcript_yields_the_humans_text_and_the_assistants_prose_only() -> None:
    messages, notes = read_transcript(MIXED)
    said = [(m.role, m.text) for m in messages if m.role in ("user", "assistant")]
    texts = " ".join(t for _, t in said)
    assert ("user", "I prefer small focused commits over one large commit at the end of a task.") in said
    assert any(r == "assistant" and t.startswith("The root cause was that the test fixture") for r, t in said)
    # what the client wrote around commands, their output, reminders and interruptions is not the human's
    for wrapped in ("/model", "Set model to", "Caveat:", "git status", "On branch main", "Python 2", "interrupted"):
        assert wrapped not in texts, wrapped
    assert "Our staging database runs on PostgreSQL 16 in eu-west-1." in texts  # beside a system reminder
    # thinking is never read; tool calls and results are `tool` messages; an API error is skipped
    assert "Kafka" not in " ".join(m.text for m in messages)
    assert "529" not in texts
    assert [m.role for m in messages if "pickle" in m.text] == ["tool"]
    assert any(m.role == "tool" and m.text.startswith("Read:") for m in messages)
    # a summary line and a compaction's summary are `summary`; a subagent's turn is marked
    assert next(m.text for m in messages if m.role == "summary") == "Switching the widgets cache to Redis"
    assert any(m.role == "summary" and "GraphQL" in m.text for m in messages)
    assert [m.sidechain for m in messages if "Rust" in m.text] == [True]
    assert any(m.role == "system" for m in messages)
    # the non-JSON line and the truncated last line are noted with their numbers
    assert len(notes) == 2
    assert notes[0].startswith("line 16: not valid JSON")
    assert notes[1].startswith("line 28: not valid JSON and without a line end")


def test_a_message_keeps_its_uuid_session_time_line_and_folder() -> None:
    messages, _ = read_transcript(MIXED)
    [decision] = [m for m in messages if m.text.startswith("We decided to use Redis")]
    assert decision == Message(
        role="user",
        text=decision.text,
        uuid="00000000-0000-4000-8000-000000000004",
        session_id="5f0c2a7e-1b3d-4c8e-9a6f-2d7b1e4c9a01",
        timestamp="2026-11-20T10:04:00.000Z",
        line=7,
        cwd="/home/dev/widgets",
        sidechain=False,
    )


def test_a_truncated_last_line_is_left_to_be_read_again_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    whole = _line(_user("We decided to deploy on Tuesdays only, never on Fridays.", "u2"))
    path.write_text(_line(_user("first message of the session here", "u1")) + whole[:40])
    part = read_transcript_part(path)
    assert [m.uuid for m in part.messages] == ["u1"] and part.end_line == 1
    with open(path, "a") as f:
        f.write(whole[40:])
    rest = read_transcript_part(path, part.end_offset, part.end_line + 1)
    assert [(m.uuid, m.line) for m in rest.messages] == [("u2", 2)] and rest.notes == []
    assert rest.end_offset == path.stat().st_size


def test_bad_lines_of_every_kind_are_skipped_with_a_note_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"type": "user", "message": {"role": "user", "content": "caf\xe9 is not utf-8 here"}}\n')
        f.write(b"[1, 2, 3]\n")
        f.write(b"\n")
        f.write(b'{"type": "user", "message": {"role": "user", "content": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}}\n')
        f.write(b'{"type": "user", "message": "not an object"}\n')
        f.write(b'{"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text"}, 7, null]}}\n')
        f.write(b"[" * 100_000 + b"\n")
        f.write(b'{"type": "made-up-type", "message": {"role": "user", "content": "skipped"}}\n')
        f.write(b'{"type": "user", "message": {"role": "user", "content": "last one"}}\n')
    messages, notes = read_transcript(path)
    assert [m.text for m in messages] == ["caf\ufffd is not utf-8 here", "last one"]
    assert [m.line for m in messages] == [1, 9]
    assert notes == [
        "line 2: a JSON list, not an object, skipped",
        f"line 4: longer than {MAX_LINE_BYTES} bytes, skipped",
        "line 7: not valid JSON (nested too deeply), skipped",
    ]


def test_ide_context_is_not_the_humans_text_but_a_typed_memory_is(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    opened = "<ide_opened_file>The user opened the file /src/app.py in the IDE.</ide_opened_file>"
    path.write_text(
        _line(_user([{"type": "text", "text": opened}, {"type": "text", "text": "why does this crash"}]))
        + _line(_user("<user-memory-input>always use pnpm, never npm</user-memory-input>", "u2"))
    )
    messages, _ = read_transcript(path)
    assert [m.text for m in messages] == ["why does this crash", "always use pnpm, never npm"]


def test_a_user_turn_another_agent_wrote_is_not_the_humans(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        _line(_user("We decided to use Kafka instead of RabbitMQ for the events.", "u1", origin={"kind": "agent"}))
        + _line(_user("We decided to use Redis instead of Memcached for sessions.", "u2", origin={"kind": "human"}))
    )
    messages, _ = read_transcript(path)
    assert [m.uuid for m in messages] == ["u2"]


def test_an_unreadable_file_raises() -> None:
    with pytest.raises(OSError):
        read_transcript(FIXTURES / "no-such-file.jsonl")


# classifying


@pytest.mark.parametrize(
    ("role", "text", "kind"),
    [
        ("user", "We decided to use PostgreSQL instead of MySQL for the analytics service.", "decision"),
        ("user", "ok, let's go with pnpm instead of npm, the lockfile diffs are much smaller.", "decision"),
        ("user", "we're going with FastAPI for the new service because the team already knows it", "decision"),
        ("user", "I prefer tabs over spaces in every Makefile of the project.", "preference"),
        ("user", "Never commit directly to main; always open a pull request.", "preference"),
        ("user", "Please always run `make lint` before you say a change is done.", "preference"),
        ("user", "In this repo we keep all migrations under db/migrations and never edit an applied one.", "convention"),
        ("user", "All API handlers must validate their input with pydantic models.", "convention"),
        ("user", "The deadline is March 14th for the public beta.", "fact"),
        ("user", "Our staging DB is on db-staging.internal:5432 behind the VPN.", "fact"),
        ("user", "It works now after I set PGSSLMODE=disable in the environment of the job.", "fix"),
        ("assistant", "The root cause was a stale `.pyc` cache in the Docker image: rebuilding with `--no-cache` fixed it.", "fix"),
        ("assistant", "Fixed the flaky login test by freezing time with `freezegun` instead of sleeping.", "fix"),
        ("user", "Do not use mocks for the database layer in any test.", "preference"),
        ("user", "Remember to never log request bodies, they contain personal data.", "preference"),
        ("user", "Use ruff instead of flake8 from now on.", "preference"),
        ("user", "Pinning numpy below 2.0 fixed the import error in the worker image.", "fix"),
        ("user", "The crash was caused by a missing index on orders.user_id.", "fix"),
        ("user", "We'll go with Terraform for the new infrastructure code.", "decision"),
        ("user", "We're not going to support Python 3.8 anymore.", "decision"),
        ("user", "Tests go under tests/unit and tests/integration, never next to the code.", "convention"),
        ("user", "Branch names should start with the ticket number.", "convention"),
        ("user", "The frontend is deployed on Vercel and the API on Fly.io.", "fact"),
        ("user", "The backend is written in Go and the workers in Python.", "fact"),
        ("user", "I'm the tech lead for the payments team.", "fact"),
    ],
)
def test_a_durable_statement_is_kept_with_its_kind(role: str, text: str, kind: str) -> None:
    candidate = classify(role, text)
    assert candidate is not None and candidate.kind == kind
    assert MIN_CHARS <= len(candidate.text) <= MAX_CHARS


@pytest.mark.parametrize(
    ("role", "text"),
    [
        ("user", "Maybe we should use Redis for this?"),
        ("user", "Should we switch the project to uv"),
        ("user", "Can you fix the failing test in test_api.py?"),
        ("user", "thanks, looks good!"),
        ("user", "I think we decided to use Celery but I'm not sure."),
        ("user", "Let's go with that."),
        ("user", "For now, let's use the in-memory cache instead of Redis."),
        ("user", "If we move to Kubernetes we decided to drop Docker Compose."),
        ("user", "Implement what we decided yesterday about the cache layer."),
        ("user", "Our api is down again since this morning."),
        ("user", "The fix didn't work, still getting the same error."),
        ("user", "Add a test that checks we never return a 500 on bad input."),
        ("user", "Let's switch to the other branch and try again."),
        ("user", "I don't like this approach at all, it is too complicated."),
        ("user", "Use ruff instead of flake8 here."),
        ("user", "The tests are written in a weird style, can you clean them up"),
        ("user", "The file is stored in /tmp for now."),
        ("user", "That fixed the issue, thanks!"),
        ("assistant", "I'll use the existing helper instead of writing a new one."),
        ("assistant", "The issue might be a race condition in the worker."),
        ("assistant", "I prefer to keep functions small, we decided that in this repo we always do so."),
        ("assistant", "All 42 tests pass now."),
        ("tool", "The root cause was a missing index on users.email, adding it fixed the slow query."),
        ("summary", "We decided to use GraphQL instead of REST for the public API."),
        ("system", "We decided to use GraphQL instead of REST for the public API."),
    ],
)
def test_questions_hedges_requests_plans_and_other_roles_are_not_kept(role: str, text: str) -> None:
    assert classify(role, text) is None


def test_code_logs_and_quotes_in_a_message_are_not_read_but_its_prose_is() -> None:
    text = (
        "Here's the log:\n```\nTraceback (most recent call last):\n  File \"x.py\", line 3\n"
        "ValueError: we decided to use tabs instead of spaces\n```\n"
        "> We decided to use MongoDB instead of PostgreSQL.\n"
        "the root cause was the timezone: our CI runs in UTC."
    )
    candidate = classify("user", text)
    assert candidate is not None
    assert candidate.text == "The root cause was the timezone: our CI runs in UTC."


def test_a_short_statement_takes_its_neighbour_and_a_too_long_one_is_dropped() -> None:
    candidate = classify("user", "The old client kept timing out on large uploads. Let's switch to httpx.")
    assert candidate is not None and candidate.text == "The old client kept timing out on large uploads. Let's switch to httpx."
    assert classify("user", "We decided to use " + "very " * 100 + "long names.") is None


def test_a_fix_without_a_subject_takes_the_sentence_before_it() -> None:
    said = "I found the issue: the config loader ignored environment variables. Fixed by reading `os.environ` first."
    candidate = classify("assistant", said)
    assert candidate is not None and candidate.text == said


def test_private_text_is_never_part_of_a_candidate() -> None:
    candidate = classify(
        "user", "We decided to keep the old endpoint <private>because Acme pays us for it</private> until Q3 ends."
    )
    assert candidate is not None and "Acme" not in candidate.text and "private" not in candidate.text.lower()
    assert classify("user", "<private>We decided to use Redis instead of Memcached for sessions.</private>") is None
    unclosed = "We decided to use Redis for sessions <PRIVATE>and the admin password is hunter2 in prod."
    assert classify("user", unclosed) is None or "hunter2" not in classify("user", unclosed).text  # type: ignore[union-attr]


def test_a_session_keeps_its_best_candidates_in_a_fixed_order_up_to_the_limit() -> None:
    messages, _ = read_transcript(MIXED)
    found = durable_candidates(messages)
    texts = [c.text for c in found]
    assert texts[0].startswith("We decided to use Redis instead of Memcached")
    assert any(t.startswith("I prefer small focused commits") for t in texts)
    assert any(t.startswith("In this repo we keep every migration") for t in texts)
    assert any(t.startswith("Never run the database migrations from a laptop") for t in texts)
    assert any(t.startswith("The root cause was that the test fixture") for t in texts)
    assert "Our staging database runs on PostgreSQL 16 in eu-west-1." in texts
    # never from tool output, thinking, summaries, a subagent, a command's output or a truncated line
    joined = " ".join(texts)
    for absent in ("pickle", "Kafka", "GraphQL", "Rust", "tabs", "Python 2", "Tuesdays", "never found", "retry"):
        assert absent not in joined, absent
    assert all(isinstance(c, Candidate) and c.uuid and c.session_id and c.line for c in found)
    assert durable_candidates(messages) == found  # deterministic
    assert durable_candidates(messages, limit=2) == found[:2]
    assert durable_candidates(messages, limit=0) == []


def test_the_same_statement_twice_in_a_session_is_one_candidate() -> None:
    said = "We decided to use Redis instead of Memcached for the session cache."
    messages = [Message("user", said, uuid="a", line=1), Message("user", said.lower() + "!", uuid="b", line=2)]
    assert [c.uuid for c in durable_candidates(messages)] == ["a"]


# review of issue 21: a secret cut in two, or URL-encoded


def test_a_token_split_across_lines_leaves_no_piece_of_it_in_a_candidate() -> None:
    token = "gh" + "p_" + "NqVwYS81VP7Hb1DXkR4mZ0aLcE2tUy9oWq3s"
    for cut in (12, 20, 28):
        text = f"We decided the deploy job uses the token {token[:cut]}\n{token[cut:]} from now on."
        kept = " ".join(c.text for c in candidates_in("user", text))
        assert not any(token[i : i + 8] in kept for i in range(len(token) - 7)), kept


def test_a_connection_string_with_a_url_encoded_password_is_not_kept() -> None:
    text = "We decided the staging database is postgres%3A%2F%2Fapp%3ATr0ub4dor%26horse%40db.internal%3A5432 for all jobs."
    kept = " ".join(c.text for c in candidates_in("user", text))
    assert "Tr0ub4dor" not in kept


def test_a_line_with_a_number_python_refuses_to_convert_is_skipped_with_a_note(tmp_path: Path) -> None:
    """A number of more than 4,300 digits (a tool call's argument) makes json.loads raise a plain ValueError: the
    line is skipped like any other bad line, not the whole session's ingest stopped at it for good."""
    path = tmp_path / "t.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"type": "user", "message": {"role": "user", "content": "first"}}\n')
        f.write(b'{"type": "assistant", "message": {"role": "assistant", "content": [{"type": "tool_use", "input": {"n": '
                + b"9" * 5000 + b"}}]}}\n")  # fmt: skip
        f.write(b'{"type": "user", "message": {"role": "user", "content": "last one"}}\n')
    messages, notes = read_transcript(path)
    assert [m.text for m in messages] == ["first", "last one"]
    assert len(notes) == 1 and notes[0].startswith("line 2: not valid JSON (")
