"""Storing a session's durable memories from its transcript: the `ingest` hook (Claude Code's SessionEnd,
PreCompact and Stop) and `agentcache-mcp ingest-transcript FILE`.

What is stored: at most `limit` (default 10, AGENTCACHE_CAPTURE_LIMIT; 0 turns the hook off) candidates per session (capture.py: decisions, preferences,
conventions, fixes, facts the user stated; secrets redacted, `<private>` removed), each a memory of the
project's namespace (hooks/project.py) tagged `captured` and its kind, with metadata `source: claude-code`,
`session_id` and `message_uuid`. No model is loaded: a memory is stored without a vector, found by keyword
at once and embedded later by a running server's writer (or `agentcache-mcp reembed`).

Idempotent and cheap to repeat. Stop fires after every turn and SessionEnd re-reads a session PreCompact has
read, so each session's progress is kept in the store's settings (the `meta` table of SQLite, the settings
table of PostgreSQL) under `capture:<sha256 of namespace and session>`: the byte offset and line read up to,
a digest of the bytes before that offset, how many candidates the session has used of its limit, and how many
`<private>` spans the human left open (they hide the messages after them until closed). The next
run reads only what was appended since; a transcript that shrank or changed before the offset is read again
from the start. A candidate whose text is already stored in the namespace (same text once case, width and
spacing are folded: the store's own content hash) is not stored again and still counts against the limit, so
ingesting the same transcript twice, or a copy of it, adds nothing. The kept state holds offsets and counts
only, never text.

Errors are raised: the hook runner (runner.py) logs them and keeps the session going.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_CAPTURE_LIMIT as DEFAULT_LIMIT
from .capture import Candidate, scan_session
from .transcript import open_regular, read_transcript_part, storable

if TYPE_CHECKING:
    import argparse

    from ..config import Settings
    from ..memory.service import MemoryService

SOURCE = "claude-code"
TAG = "captured"
STATE_PREFIX = "capture:"
TAIL_BYTES = 256
"""How many bytes before the offset read last time must be unchanged for the next read to start there."""
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(slots=True)
class ReadState:
    """How far a session's transcript was read (kept in the store's settings)."""

    offset: int = 0
    line: int = 0
    taken: int = 0
    tail: str = ""
    private: int = 0
    """`<private>` spans the part read left open (capture.scan_session): they hide the start of the next part."""

    def dumps(self) -> str:
        return json.dumps(
            {"v": 1, "offset": self.offset, "line": self.line, "taken": self.taken, "tail": self.tail, "private": self.private}
        )

    @classmethod
    def loads(cls, raw: str | None) -> ReadState:
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            state = cls(
                int(data["offset"]), int(data["line"]), int(data["taken"]), str(data["tail"]), int(data.get("private", 0))
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()
        return state if min(state.offset, state.line, state.taken, state.private) >= 0 else cls()


@dataclass(slots=True)
class IngestReport:
    path: str
    namespace: str
    session: str
    dry_run: bool
    from_line: int
    to_line: int
    messages: int = 0
    selected: list[Candidate] = field(default_factory=list)
    """The candidates this run chose (within what is left of the session's limit), best first."""
    added: list[tuple[str, Candidate]] = field(default_factory=list)
    """(memory id, candidate) of those stored now; in a dry run, the id is empty."""
    already_stored: int = 0
    used_before: int = 0
    """Of the session's limit, how much earlier runs used."""
    notes: list[str] = field(default_factory=list)


def session_key(path: Path, session_id: str | None) -> str:
    """The session a transcript belongs to: the hook's session id, else the first `sessionId` of the file, else
    its name when it is one (Claude Code names a transcript `<session id>.jsonl`), else its absolute path."""
    if session_id:
        return session_id
    found = _first_session_id(path)
    if found:
        return found
    if _UUID.fullmatch(path.stem):
        return path.stem
    return str(path.expanduser().resolve())


def _first_session_id(path: Path, max_bytes: int = 1 << 20) -> str | None:
    """The first `sessionId` in the first MiB of the file (the first lines name it; a summary line does not)."""
    read = 0
    with open_regular(path) as f:
        while read < max_bytes and (raw := f.readline(max_bytes - read)):
            read += len(raw)
            match = re.search(rb'"sessionId"\s*:\s*"([^"\\]{1,200})"', raw)
            if match:
                return match.group(1).decode("utf-8", errors="replace")
    return None


def state_name(namespace: str, session: str) -> str:
    digest = hashlib.sha256(f"{namespace}\0{session}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return STATE_PREFIX + digest


def _tail_digest(path: Path, offset: int) -> str:
    if offset <= 0:
        return ""
    with open_regular(path) as f:
        start = max(0, offset - TAIL_BYTES)
        f.seek(start)
        return hashlib.sha256(f.read(offset - start)).hexdigest()


def ingest_transcript(
    memory: MemoryService,
    path: str | os.PathLike[str],
    *,
    namespace: str,
    session_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
    dry_run: bool = False,
) -> IngestReport:
    """Store the durable memories of the part of `path` not read before (see the module docstring)."""
    from ..memory.model import content_hash
    from ..memory.validation import InvalidInput

    transcript = Path(path)
    session = session_key(transcript, session_id)
    name = state_name(namespace, session)
    state = ReadState.loads(memory.backend.memories.get_setting(name))
    notes: list[str] = []
    size = transcript.stat().st_size
    if state.offset and (state.offset > size or _tail_digest(transcript, state.offset) != state.tail):
        notes.append("the transcript changed before where it was last read: read again from its start")
        state = ReadState(taken=state.taken)
    part = read_transcript_part(transcript, state.offset, state.line + 1)
    notes.extend(part.notes)
    report = IngestReport(
        str(transcript), namespace, session, dry_run, state.line + 1, part.end_line, len(part.messages),
        used_before=state.taken, notes=notes,
    )
    left = max(0, limit - state.taken)
    private = state.private
    if left:
        report.selected, private = scan_session(part.messages, limit=left, private_depth=state.private)
    hashes = {c.text: content_hash(c.text) for c in report.selected}
    stored = {
        m.content_hash for m in memory.backend.memories.find_by_content([(namespace, h) for h in hashes.values()])
    } if hashes else set()
    for candidate in report.selected:
        if hashes[candidate.text] in stored:
            report.already_stored += 1
            continue
        stored.add(hashes[candidate.text])
        if dry_run:
            report.added.append(("", candidate))
            continue
        metadata: dict[str, Any] = {"source": SOURCE, "session_id": storable(candidate.session_id or session_id or session)[:200]}
        if candidate.uuid:
            metadata["message_uuid"] = candidate.uuid[:200]
        try:
            result = memory.remember(candidate.text, namespace, tags=[TAG, candidate.kind], metadata=metadata)
        except InvalidInput as exc:  # one refused memory does not stop the others nor the session's progress
            report.notes.append(f"line {candidate.line}: not stored ({exc})")
            continue
        if result.deduplicated:  # stored meanwhile by another process
            report.already_stored += 1
        else:
            report.added.append((result.id, candidate))
    if not dry_run:
        advanced = ReadState(
            part.end_offset,
            part.end_line,
            state.taken + len(report.selected),
            _tail_digest(transcript, part.end_offset),
            private,
        )
        memory.backend.memories.put_setting(name, advanced.dumps())
    return report


def run_hook(payload: dict[str, Any]) -> None:
    """Claude Code's SessionEnd / PreCompact / Stop hook input (`transcript_path`, `session_id`, `cwd`,
    `hook_event_name`): ingest the session's transcript into the project's namespace. Raises on any error."""
    from .. import app
    from ..config import Settings
    from .project import project_namespace

    settings = Settings.from_env()
    if settings.capture_limit == 0:  # AGENTCACHE_CAPTURE_LIMIT=0: capture is off
        return
    raw = payload.get("transcript_path")
    if not isinstance(raw, str) or not raw:
        raise ValueError("the hook input has no transcript_path")
    path = Path(raw).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"the transcript {path} is not a file")
    session_id = payload.get("session_id") if isinstance(payload.get("session_id"), str) else None
    given_cwd = payload.get("cwd")
    cwd = given_cwd if isinstance(given_cwd, str) and given_cwd else os.getcwd()
    namespace = project_namespace(cwd)
    memory = app.open_memory(settings.for_one_command())
    try:
        ingest_transcript(memory, path, namespace=namespace, session_id=session_id or None, limit=settings.capture_limit)
    finally:
        memory.close(checkpoint=True)


def transcript_cwd(path: Path) -> str | None:
    """The folder the session ran in, from the first line of the transcript that names one."""
    part = read_transcript_part(path)
    return next((m.cwd for m in part.messages if m.cwd), None)


def ingest_command(args: argparse.Namespace, settings: Settings) -> int:
    """`agentcache-mcp ingest-transcript FILE [--namespace NS] [--limit N] [--dry-run] [--json]`."""
    from .. import app, console
    from ..commands import EXIT_USAGE, CommandFailed
    from ..memory.validation import InvalidInput, validate_namespace
    from .project import ProjectNamespaceError, project_namespace

    path = Path(args.file).expanduser()
    if not path.is_file():
        what = "not a regular file" if path.exists() else "not there"
        raise CommandFailed(f"{path} is {what}: give a Claude Code transcript (a .jsonl file)", EXIT_USAGE)
    if args.limit < 1:
        raise CommandFailed(f"--limit must be at least 1, got {args.limit}", EXIT_USAGE)
    try:
        if args.namespace is not None:
            namespace = validate_namespace(args.namespace)
        else:
            namespace = project_namespace(transcript_cwd(path) or os.getcwd())
    except (InvalidInput, ProjectNamespaceError) as exc:
        raise CommandFailed(f"--namespace: {exc}", EXIT_USAGE) from None
    store_settings = settings
    if args.dry_run and settings.database_url is None and not settings.db_path.exists():
        store_settings = settings.model_copy(update={"db_path": Path(":memory:")})  # a dry run creates nothing
    memory = app.open_memory(store_settings.for_one_command())
    try:
        report = ingest_transcript(memory, path, namespace=namespace, limit=args.limit, dry_run=args.dry_run)
    finally:
        memory.close(checkpoint=not args.dry_run)
    if args.json:
        console.emit_json(
            {
                "file": report.path,
                "namespace": report.namespace,
                "session": report.session,
                "dry_run": report.dry_run,
                "lines": [report.from_line, report.to_line],
                "messages": report.messages,
                "added": [{"id": i, "kind": c.kind, "text": c.text, "line": c.line} for i, c in report.added],
                "already_stored": report.already_stored,
                "limit_used_before": report.used_before,
                "notes": report.notes,
            }
        )
        return 0
    for note in report.notes:
        console.note(f"{path.name}: {note}")
    if report.added:
        console.table(
            [("kind", console.WHOLE), ("line", {"justify": "right"}), "text"],
            [(c.kind, str(c.line), console.shorten(c.text, 200)) for _, c in report.added],
        )
    verb = "would add" if args.dry_run else "added"
    if report.to_line < report.from_line:
        console.say(f"nothing new after line {report.to_line}: nothing to add to namespace {namespace!r}")
    else:
        console.say(
            f"{verb} {len(report.added)} of {len(report.selected)} durable "
            f"{'memory' if len(report.selected) == 1 else 'memories'} found in lines {report.from_line}-"
            f"{report.to_line} to namespace {namespace!r}; {report.already_stored} already stored"
        )
    if report.used_before:
        console.say(f"earlier runs took {report.used_before} of this session's limit of {args.limit}")
    return 0
