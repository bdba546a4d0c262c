"""The subcommands for people at a terminal (and scripts): recall, list, show, forget, stats, erase, reembed,
backup, export, import, ingest-transcript (hooks/ingest.py), auth (the OAuth clients and grants).

Each opens the store, does its work and closes it (no background workers, nothing held open that could stall
a running server), prints its result on stdout (a table, or one JSON document with --json) and progress on
stderr, only at a terminal (console.py). Exit codes: 0 done, 1 failed (the store is unusable, a backup did
not verify, an import was refused, an id was not found), 2 usage error (a bad flag or value), 130
interrupted; every error is one line on stderr. `cli.py` parses the flags and calls `run_command`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .config import Settings

if TYPE_CHECKING:
    from .auth.state import Grant, StoredClient
    from .memory.model import Memory
    from .memory.service import MemoryService
    from .output_files import Target, TargetRefused


def stats(settings: Settings) -> dict[str, Any]:
    from .app import open_memory

    memory = open_memory(settings.for_one_command())
    try:
        memory.load_vectors()
        return memory.stats()
    finally:
        memory.close(checkpoint=False)


EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
"""What every id this server hands out looks like (Crockford base32); an import may have kept others."""
PAGE = 100
T = TypeVar("T")


class CommandFailed(Exception):
    """Ends a subcommand: one line on stderr, and this exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def run_command(command: str, args: argparse.Namespace, settings: Settings) -> int:
    """Run one of COMMANDS; every error becomes one line on stderr and an exit code (see the module doc)."""
    from .embeddings import EmbeddingModelError
    from .memory.ports import StoreError, StoreUnavailable
    from .memory.validation import InvalidInput

    try:
        return _HANDLERS[command](args, settings)
    except CommandFailed as exc:
        return print_error(str(exc), exc.code)
    except StoreUnavailable as exc:  # as at `serve`: the configuration names a store that cannot be used
        return print_error(f"invalid configuration: {exc}", EXIT_USAGE)
    except InvalidInput as exc:  # the service's own checks: the same words as the tools' errors
        return print_error(str(exc), EXIT_USAGE)
    except (StoreError, EmbeddingModelError) as exc:
        return print_error(str(exc), EXIT_FAILED)
    except BrokenPipeError:  # the reader went away (`| head`): stop without a traceback
        try:  # and without another one when the interpreter flushes stdout on the way out
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_FAILED
    except KeyboardInterrupt:
        return print_error("interrupted", EXIT_INTERRUPTED)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return print_error(f"{exc.strerror or exc}{where}", EXIT_FAILED)


def print_error(message: str, code: int) -> int:
    """One line on stderr: whitespace folded, control characters (an id, a path or a file's line may carry
    them) shown as escapes."""
    from .console import safe

    print(f"agentcache-mcp: {safe(' '.join(message.split()))}", file=sys.stderr, flush=True)
    return code


@contextmanager
def _store(
    settings: Settings, *, must_exist: bool = True, model: str | None = None, write: bool = False
) -> Iterator[MemoryService]:
    """The store, open for one command and closed after it: no background workers, nothing left running.
    A read closes without a checkpoint (which could wait on running servers); a write checkpoints, so what a
    forget deleted leaves the WAL too."""
    if must_exist and settings.database_url is None and not settings.db_path.exists():
        raise CommandFailed(
            f"no memory database at {settings.db_path} (nothing has been stored yet, or --db / AGENTCACHE_DB "
            "names another file)"
        )
    from . import app

    if model is not None:
        settings = settings.model_copy(update={"embedding_model": model})
    memory = app.open_memory(settings.for_one_command())
    try:
        yield memory
    finally:
        memory.close(checkpoint=write)


def _load_model(memory: MemoryService, *, required: bool) -> None:
    """Load the embedding model now: the CLI has no background loader. Not `required` (recall): a failure is
    kept by the embedder, and recall answers by keyword and says why."""
    from . import console
    from .embeddings import EmbeddingModelError

    with console.spinner(f"loading the embedding model {memory.embedder.model_id}"):
        try:
            memory.embedder.load()
        except EmbeddingModelError:
            if required:
                raise


def _namespace(args: argparse.Namespace, settings: Settings) -> str:
    from .memory.validation import validate_namespace

    if args.namespace is None:
        return settings.namespace  # checked with the settings
    return _flag("--namespace", ("namespace",), lambda: validate_namespace(args.namespace))


def _flag(flag: str, names: tuple[str, ...], check: Callable[[], T]) -> T:
    """Run one of the service's checks on a flag's value: its refusal names the flag (`--limit must be ...`),
    not the tool argument the same check names for the tools (`limit`, `older_than_days`)."""
    from .memory.validation import InvalidInput

    try:
        return check()
    except InvalidInput as exc:
        message = str(exc)
        for name in names:
            if message.startswith(name + " "):
                raise CommandFailed(flag + message[len(name) :], EXIT_USAGE) from None
        raise CommandFailed(f"{flag}: {message}", EXIT_USAGE) from None


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _memory_json(m: Memory) -> dict[str, Any]:
    """Every field of a memory, as the `agentcache://memory/{id}` resource shows it."""
    from .memory.model import memory_fields

    return memory_fields(m)


def _state(m: Memory, now: float) -> str:
    if m.expires_at is not None and m.expires_at <= now:
        return "expired"
    return "superseded" if m.superseded_by else ""


def _check_id(memory: MemoryService, memory_id: str) -> None:
    """An id that is not shaped like ours and is in no namespace is a usage error (a typo, a name, a path)."""
    if not ULID.fullmatch(memory_id) and memory.get(memory_id) is None:
        raise CommandFailed(
            f"no memory has the id {memory_id[:70]!r} in any namespace: the ids this server gives are 26 letters and "
            "digits, like 01JH3X5ZQ8W5V1R7Y0K2M4N6P8; an imported memory keeps the id it came with (`list` shows ids)",
            EXIT_USAGE,
        )


# recall


def _recall(args: argparse.Namespace, settings: Settings) -> int:
    from . import console
    from .memory.model import RecallOutcome
    from .memory.validation import validate_limit, validate_query, validate_tags

    query = " ".join(args.query)
    namespace = _namespace(args, settings)
    validate_query(query, settings.max_text_bytes)  # refuse a bad argument before the model loads
    _flag("--tag", ("tags",), lambda: validate_tags(args.tag))
    _flag("--limit", ("limit",), lambda: validate_limit(args.limit))
    pending = 0
    with _store(settings) as memory:
        if not memory.backend.memories.counts_by_namespace().get(namespace):
            # nothing to rank: no reason to load the model for it
            outcome = RecallOutcome([], "keyword", f"namespace {namespace!r} has no memories")
        else:
            _load_model(memory, required=False)
            # touch=False: a person looking does not count as the agent using a memory (auto-forget)
            outcome = memory.recall_outcome(query, namespace, args.tag, args.limit, touch=False)
            if outcome.retrieval == "hybrid":
                pending = memory.pending_embeddings()
        model_id = memory.embedder.model_id
    if args.json:
        # what the recall tool returns (RecallResult)
        console.emit_json(
            {
                "results": [dataclasses.asdict(hit) for hit in outcome.hits],
                "retrieval": outcome.retrieval,
                "retrieval_note": outcome.note,
                "match": outcome.match,
            }
        )
        return 0
    if outcome.hits:
        console.table(
            [
                ("#", {"justify": "right"}),
                ("id", console.WHOLE),
                ("score", {"justify": "right", **console.WHOLE}),
                "created (UTC)",
                "tags",
                "text",
            ],
            [
                (
                    str(n),
                    hit.id,
                    f"{hit.score:.3f}",
                    console.when(hit.created_at),
                    console.shorten(", ".join(hit.tags), 30),
                    console.shorten(hit.text),
                )
                for n, hit in enumerate(outcome.hits, start=1)
            ],
        )
    else:
        console.say(f"no memory of namespace {namespace!r} matches {console.shorten(query, 60)!r}")
    if outcome.retrieval == "hybrid":
        console.say("retrieval: hybrid (by meaning and by keywords)")
    else:
        console.say(f"retrieval: keyword only ({console.safe(outcome.note or '')})")
    if pending:
        console.say(
            f"{_plural(pending, 'memory', 'memories')} of the store have no vector from {model_id} yet and are "
            "found by keyword only (a running server embeds them; or run `agentcache-mcp reembed`)"
        )
    return 0


# list


def _list(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from . import console
    from .memory.validation import validate_tags

    namespace = _namespace(args, settings)
    tags = _flag("--tag", ("tags",), lambda: validate_tags(args.tag))
    if args.limit < 1:
        raise CommandFailed(f"--limit must be at least 1, got {args.limit}", EXIT_USAGE)
    with _store(settings) as memory:
        total = memory.backend.memories.counts_by_namespace().get(namespace, 0)
        found, more = _newest(memory, namespace, set(tags), args.limit)
    if args.json:
        console.emit_json(
            {"namespace": namespace, "tags": tags, "memories": [_memory_json(m) for m in found], "more": more}
        )
        return 0
    now = time.time()
    if found:
        console.table(
            [("id", console.WHOLE), "created (UTC)", ("importance", {"justify": "right"}), "tags", "text"],
            [
                (
                    m.id,
                    console.when(m.created_at),
                    f"{m.importance:g}",
                    console.shorten(", ".join(m.tags), 30),
                    (f"({state}) " if (state := _state(m, now)) else "") + console.shorten(m.text),
                )
                for m in found
            ],
        )
    with_tags = f" with tags {console.safe(', '.join(tags))}" if tags else ""
    if not found:
        console.say(f"namespace {namespace!r} has no memories{with_tags}")
    elif tags:
        console.say(f"the {len(found)} newest{with_tags}, of {_plural(total, 'memory', 'memories')} in {namespace!r}")
    else:
        console.say(f"the {len(found)} newest of {_plural(total, 'memory', 'memories')} in namespace {namespace!r}")
    if more:
        console.say("more: raise --limit")
    return 0


def _newest(memory: MemoryService, namespace: str, tags: set[str], limit: int) -> tuple[list[Memory], bool]:
    """Up to `limit` memories of the namespace with all these tags, newest first; and whether there are more.
    Pages by row key, so a memory deleted meanwhile by a server cannot break the paging."""
    found: list[Memory] = []
    before: int | None = None
    while True:
        page = memory.backend.memories.recent(namespace, PAGE, before)
        for m in page:
            if tags <= set(m.tags):
                if len(found) == limit:
                    return found, True
                found.append(m)
        if len(page) < PAGE:
            return found, False
        before = page[-1].key


# show


def _show(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from . import console
    from .memory.model import iso
    from .memory.validation import validate_ids

    [memory_id] = validate_ids([args.id], "id")
    with _store(settings) as memory:
        found = memory.get(memory_id)
        if found is None:
            _check_id(memory, memory_id)
            raise CommandFailed(f"no memory with id {memory_id!r} (in any namespace)")
    if args.json:
        console.emit_json(_memory_json(found))
        return 0
    m = found

    def at(ts: float | None, none: str) -> str:
        return none if ts is None else iso(ts)

    state = _state(m, time.time())
    console.fields(
        [
            ("id", console.safe(m.id)),  # one line, escaped as `list` shows it: only the text keeps its breaks
            ("namespace", console.safe(m.namespace)),
            ("text", console.safe(m.text, multiline=True)),
            ("tags", console.safe(", ".join(m.tags)) or "-"),
            ("importance", f"{m.importance:g}"),
            ("metadata", console.safe(json.dumps(m.metadata, ensure_ascii=False)) if m.metadata else "-"),
            ("created", iso(m.created_at)),
            ("updated", iso(m.updated_at)),
            ("last recalled", at(m.last_accessed_at, "never")),
            ("times recalled", str(m.access_count)),
            ("expires", at(m.expires_at, "never")),
            ("superseded by", console.safe(m.superseded_by or "-")),
            ("state", state or "live (recall can return it)"),
        ]
    )
    return 0


# forget


def _forget(args: argparse.Namespace, settings: Settings) -> int:
    from . import console
    from .memory.validation import validate_positive_days, validate_tags

    namespace = _namespace(args, settings)
    tags = _flag("--tag", ("tags",), lambda: validate_tags(args.tag))
    days = _flag(
        "--older-than-days", ("--older-than-days",), lambda: validate_positive_days(args.older_than_days, "--older-than-days")
    )
    # the tool's rules (MemoryService.forget), in the words of the flags; ids too are only listed unless --yes
    if args.ids and (tags or days is not None):
        raise CommandFailed("forget takes either ids or a filter (--tag, --older-than-days), not both", EXIT_USAGE)
    if not args.ids and not tags and days is None and args.namespace is None:
        raise CommandFailed(
            "forget needs ids, or a filter: --tag, --older-than-days, or --namespace (to forget a whole namespace)",
            EXIT_USAGE,
        )
    selection = (args.ids, args.namespace, tags, days)
    with _store(settings, write=args.yes) as memory:
        for memory_id in dict.fromkeys(args.ids):
            _check_id(memory, memory_id)
        listed = memory.forget(*selection, dry_run=True)
        result = memory.forget(*selection, dry_run=False) if args.yes else listed
    previews = dict(listed.previews)
    if args.json:
        console.emit_json(
            {
                "deleted": result.deleted,
                "dry_run": result.dry_run,
                "not_found": result.not_found,
                "previews": [{"id": i, "preview": previews.get(i, "")} for i in result.deleted],
            }
        )
    else:
        if result.deleted:
            console.table([("id", console.WHOLE), "text"], [(i, console.shorten(previews.get(i, ""), 80)) for i in result.deleted])
        count = _plural(len(result.deleted), "memory", "memories")
        if not result.deleted:
            console.say(f"nothing to delete in namespace {namespace!r}")
        elif result.dry_run:
            console.say(
                f"would delete {count} of namespace {namespace!r}; nothing was deleted. "
                f"Run the same command with --yes to delete {'it' if len(result.deleted) == 1 else 'them'}."
            )
        else:
            console.say(f"deleted {count} of namespace {namespace!r}")
            if settings.database_url is not None and settings.pg_erase != "after-forget":
                console.say(
                    "PostgreSQL keeps their bytes in the database files until the erase "
                    f"({'daily at ' + settings.pg_erase_at + ' UTC' if settings.pg_erase == 'daily' else 'manual'}, "
                    "AGENTCACHE_PG_ERASE); `agentcache-mcp erase` runs it now"
                )
    if result.not_found:
        return print_error(
            f"not memories of namespace {namespace!r} (nothing was done to them): {', '.join(result.not_found)}",
            EXIT_FAILED,
        )
    return 0


# stats


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    from . import console

    data = stats(settings)
    if args.json or not console.stdout_is_tty():
        # JSON also when piped: what `stats` always printed, so scripts written for it keep working
        console.emit_json(data)
        return 0
    index = data["index"]
    namespaces: dict[str, int] = data["namespaces"]
    pending = data["pending_embeddings"]
    console.fields(
        [
            ("database", f"{data['db_path']} ({index.get('backend')}, schema {index.get('schema_version')})"),
            ("memories", f"{data['memories']} in {_plural(len(namespaces), 'namespace')}"),
            ("embedding model", data["embedding_model"]),
            ("vectors", f"{index['vectors_loaded']} from this model; {pending} memories wait for one"),
            *_erasure_fields(index.get("erasure")),
        ]
    )
    if namespaces:
        console.table(
            [("namespace", console.WHOLE), ("memories", {"justify": "right"})],
            [(console.safe(ns), str(n)) for ns, n in sorted(namespaces.items(), key=lambda kv: (-kv[1], kv[0]))],
        )
    if pending:
        console.say("a running server embeds waiting memories in the background; or run `agentcache-mcp reembed`")
    return 0


# erase


def _erase(args: argparse.Namespace, settings: Settings) -> int:
    from . import console

    with _store(settings) as memory:
        with console.spinner("erasing what forgotten memories left in the store's files"):
            report = memory.backend.erase()
        erasure = memory.backend.describe().get("erasure")
    postponed = not report.erased and report.attempts > 0
    if args.json:
        console.emit_json({**dataclasses.asdict(report), "erasure": erasure})
    else:
        console.say(("erased: " if report.erased else "") + report.note)
        if report.erased and report.attempts:
            console.say(
                f"{_plural(report.attempts, 'try', 'tries')} for the table's lock, {report.seconds:.2f} s in all. "
                "PostgreSQL's write-ahead log (pg_wal), WAL archives, replicas and backups keep the text until they "
                "are recycled (README: Team deployment)"
            )
    return EXIT_FAILED if postponed else 0


def _erasure_fields(erasure: Any) -> list[tuple[str, str]]:
    """The stats lines of what forgotten memories left on disk (PostgreSQL; SQLite's is one sentence)."""
    if isinstance(erasure, str):
        return [("erase", erasure)]
    if not isinstance(erasure, dict):
        return []
    count = erasure["forgotten_on_disk"]
    if count == 0:
        left = "none"
    else:
        since = erasure["forgotten_since"]
        left = (
            ("an unknown number of memories" if count is None else _plural(count, "memory", "memories"))
            + (f", forgotten since {since}" if since else "")
        )
    last = erasure["last_erase"]
    return [
        ("still on disk", f"{left} (in the database files: gone from every result)"),
        ("erase", f"{erasure['setting']}; next: {erasure['next_erase']}"),
        ("last erase", "never" if last is None else f"{last}, the table locked {erasure['last_erase_locked_s']} s"),
    ]


# reembed


def _reembed(args: argparse.Namespace, settings: Settings) -> int:
    from . import console

    model = settings.embedding_model if args.model is None else args.model.strip()
    if not model:
        raise CommandFailed("--model must name a sentence-transformers model or a path to one", EXIT_USAGE)
    with _store(settings, model=model, write=True) as memory:
        model_id = memory.embedder.model_id
        stored = sum(memory.backend.memories.counts_by_namespace().values())
        pending = memory.pending_embeddings()
        embedded = 0
        if pending:
            _load_model(memory, required=True)
            try:
                embedded = _embed_pending(memory, pending, settings.embed_batch_size)
            except KeyboardInterrupt:
                left = memory.pending_embeddings()
                raise CommandFailed(
                    f"interrupted: {_plural(left, 'memory', 'memories')} still to embed with {model_id}; every "
                    "vector written so far is kept: run the same command again to continue where it stopped",
                    EXIT_INTERRUPTED,
                ) from None
        left = memory.pending_embeddings()
    switching = model != settings.embedding_model
    if args.json:
        console.emit_json(
            {
                "model": model_id,
                "memories": stored,
                "embedded": embedded,
                "already_embedded": stored - pending,
                "pending": left,
                "servers_use": settings.embedding_model,
            }
        )
        return 0
    if not stored:
        console.say("the store has no memories: nothing to embed")
    elif not pending:
        console.say(f"all {_plural(stored, 'memory', 'memories')} already have a vector from {model_id}: nothing to do")
    else:
        console.say(f"embedded {_plural(embedded, 'memory', 'memories')} with {model_id}")
    if left:
        console.say(f"{left} written meanwhile still wait; run reembed again, or let a server embed them")
    if switching:
        console.say(
            f"servers use {settings.embedding_model} until you set AGENTCACHE_EMBEDDING_MODEL={model} in their "
            "environment (a host's `env` block) and restart them; vectors of the old model are kept"
        )
    return 0


def _embed_pending(memory: MemoryService, pending: int, batch_size: int) -> int:
    """Embed every memory with no vector from the embedder's model, batch by batch, each batch written in
    its own transaction: an interrupted run keeps what it wrote, and the next run starts with what is left
    (vectors are stored per memory and model)."""
    from . import console

    model_id = memory.embedder.model_id
    done = after = 0
    with console.progress(f"embedding with {model_id}", pending, unit="memories") as update:
        while batch := memory.embedding_batch(after, batch_size):
            vectors = memory.embedder.embed([text for _, text, _ in batch])
            # to the store directly: MemoryService.store_embeddings would also load every vector into this
            # process's search index, which reembed never searches (memory would grow with the store)
            memory.backend.embeddings.write(
                model_id, [(key, digest, v) for (key, _, digest), v in zip(batch, vectors, strict=True)]
            )
            done += len(batch)
            after = batch[-1][0]
            update(done, max(pending, done))
    return done


# backup


def other_store_kind(args: argparse.Namespace) -> str | None:
    """For `backup`: what to use instead when the store is not a SQLite file (AGENTCACHE_DB / --db is a URL).
    The URL itself is not repeated: it may carry a password."""
    raw = getattr(args, "db", None) or os.environ.get("AGENTCACHE_DB") or ""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", raw)
    if scheme is None:
        return None
    kind = scheme.group(1).lower()
    if kind.startswith("postgres"):
        return (
            "backup copies SQLite stores; for PostgreSQL use its own tools: pg_dump --format=custom "
            "--file=DEST 'URL' (restore with pg_restore), or `agentcache-mcp export` for a portable copy"
        )
    return (
        f"backup copies SQLite stores, not {kind}:// ones; use that store's own backup tools, or agentcache-mcp export"
    )


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    from . import console
    from .backends.sqlite.backup import BackupError, backup_sqlite
    from .output_files import TargetRefused

    source = settings.db_path
    dest = Path(os.path.abspath(Path(args.dest).expanduser()))
    if dest.is_dir():
        raise CommandFailed(
            f"{dest} is a directory: name the backup file, e.g. {dest / 'memory-backup.db'}", EXIT_USAGE
        )
    if not dest.parent.is_dir():
        raise CommandFailed(f"the directory {dest.parent} does not exist", EXIT_USAGE)
    if not source.exists():
        raise CommandFailed(f"no memory database at {source} (--db / AGENTCACHE_DB names the one to back up)")
    with console.progress("backing up", None, unit="pages") as update:
        try:
            result = backup_sqlite(
                source,
                dest,
                overwrite=args.force,
                progress=update,
                verifying=lambda: update(description="checking the copy (integrity_check)"),
            )
        except BackupError as exc:
            raise CommandFailed(str(exc)) from None
        except TargetRefused as exc:
            raise _refused(exc) from None
    if args.json:
        console.emit_json(
            {
                "source": str(source),
                "dest": str(result.dest),
                "bytes": result.bytes,
                "pages": result.pages,
                "memories": result.memories,
                "integrity_check": result.integrity_check,
                "seconds": round(result.seconds, 3),
            }
        )
        return 0
    what = "" if result.memories is None else f"{_plural(result.memories, 'memory', 'memories')}, "
    console.say(
        f"backed up {source} to {result.dest} ({what}{result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s); "
        f"integrity_check of the copy: {result.integrity_check}"
    )
    return 0


# export and import


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from . import console
    from .memory.validation import validate_namespace
    from .output_files import TargetRefused, check_target

    namespaces = None if not args.namespace else list(dict.fromkeys(validate_namespace(n) for n in args.namespace))
    target: Target | None = None
    if args.output not in STDOUT_NAMES:
        path = Path(os.path.abspath(Path(args.output).expanduser()))
        if path.is_dir() or not path.parent.is_dir():
            problem = "is a directory" if path.is_dir() else "is in a directory that does not exist"
            raise CommandFailed(f"-o {args.output}: {path} {problem}", EXIT_USAGE)
        store = None if settings.database_url is not None else settings.db_path
        try:
            target = check_target(path, store=store, force=args.force, streams=True)
        except TargetRefused as exc:
            raise _refused(exc) from None
    try:
        from .memory.exchange import export_jsonl
    except ImportError as exc:
        raise CommandFailed(f"export is not available in this installation ({exc})") from None
    with _store(settings) as memory:
        counts = memory.backend.memories.counts_by_namespace()
        total = sum(counts.values()) if namespaces is None else sum(counts.get(ns, 0) for ns in namespaces)

        def export(out: Any, progress: Callable[[int], None]) -> int:
            return export_jsonl(memory, out, namespaces=namespaces, with_vectors=args.with_vectors, progress=progress)

        # no bar over an export scrolling by on the terminal itself
        drawn = target is not None or not console.stdout_is_tty()
        with console.progress("exporting", total, unit="memories", enabled=drawn) as update:
            written = (
                _write_stdout(lambda out: export(out, lambda n: update(n, None)))
                if target is None
                else _write_file(target, lambda out: export(out, lambda n: update(n, None)), force=args.force)
            )
    scope = "every namespace" if namespaces is None else "namespace " + ", ".join(namespaces)
    summary = f"exported {_plural(written, 'memory', 'memories')} ({scope})"
    if target is not None:
        console.say(f"{summary} to {target.path}")
    elif console.stderr_is_tty():
        console.note(summary)  # stdout is the export
    for ns in namespaces or []:
        if not counts.get(ns):
            console.note(f"agentcache-mcp: namespace {ns!r} has no memories")
    return 0


def _refused(exc: TargetRefused) -> CommandFailed:
    """export -o / backup may not write where asked: a usage error when no --force could make it right."""
    return CommandFailed(str(exc), EXIT_USAGE if exc.usage else EXIT_FAILED)


STDOUT_NAMES = (None, "-", "/dev/stdout")
"""`-o` values that mean stdout: /dev/stdout is not a file in /dev to replace."""


def _write_stdout(write: Callable[[Any], int]) -> int:
    """Run write(out) on stdout as UTF-8 with \\n line ends, whatever the locale says."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        return write(sys.stdout)
    out = io.TextIOWrapper(buffer, encoding="utf-8", newline="\n")
    try:
        written = write(out)
        out.flush()
        return written
    finally:
        out.detach()  # leave sys.stdout's buffer open


def _write_file(target: Target, write: Callable[[Any], int], *, force: bool) -> int:
    """Run write(out) into a new owner-only temporary file beside the target, then move it into place: no
    half-written export, nothing overwritten unless `force` (output_files). A FIFO or terminal is written
    in place."""
    from .output_files import TargetRefused, create_temporary, move_into_place, open_stream

    try:
        if target.stream:
            with os.fdopen(open_stream(target), "w", encoding="utf-8", newline="\n") as out:
                return write(out)
        tmp, fd = create_temporary(target.entry)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
                written = write(out)
                out.flush()
                os.fsync(out.fileno())
            move_into_place(tmp, target, force=force)
        finally:
            tmp.unlink(missing_ok=True)
    except TargetRefused as exc:
        raise _refused(exc) from None
    return written


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from . import console
    from .memory.validation import validate_namespace

    path = Path(args.file).expanduser()
    if not path.is_file():
        what = "not a regular file (a pipe or a device is not read: save it to a file first)" if path.exists() else ""
        raise CommandFailed(f"{path} is {what}" if what else f"no such file: {path}", EXIT_USAGE)
    namespace = None if args.namespace is None else validate_namespace(args.namespace)
    try:
        from .memory.exchange import ImportInterrupted, ImportRefused, import_jsonl
    except ImportError as exc:
        raise CommandFailed(f"import is not available in this installation ({exc})") from None
    store_settings = settings
    if args.dry_run and settings.database_url is None and not settings.db_path.exists():
        # a dry run writes nothing, not even a new empty database: check against an empty in-memory store
        store_settings = settings.model_copy(update={"db_path": Path(":memory:")})
    with _store(store_settings, must_exist=False, write=not args.dry_run) as memory:
        with console.progress(f"checking {path.name}", None, unit="memories") as update:
            try:
                report = import_jsonl(
                    memory,
                    path,
                    namespace=namespace,
                    dry_run=args.dry_run,
                    skip_invalid=args.skip_invalid,
                    progress=lambda done, total: update(done, total, description="importing"),
                )
            except ImportRefused as exc:
                raise CommandFailed(f"import refused: {exc}") from None
            except ImportInterrupted as exc:
                code = EXIT_INTERRUPTED if isinstance(exc.__cause__, KeyboardInterrupt) else EXIT_FAILED
                raise CommandFailed(f"import interrupted: {exc}", code) from None
            except OSError as exc:
                raise CommandFailed(f"cannot import {path}: {exc.strerror or exc}; nothing was imported") from None
        pending = memory.pending_embeddings() if report.applied else 0
        model_id = memory.embedder.model_id
    if args.json:
        console.emit_json(
            {
                "file": str(path),
                "format": report.format,
                "dry_run": args.dry_run,
                "applied": report.applied,
                "added": report.added,
                "skipped_existing": report.skipped_existing,
                "invalid": [{"line": line, "reason": reason} for line, reason in report.invalid],
                "dropped_vectors": report.dropped_vectors,
                "pending_embeddings": pending,
            }
        )
        return 0
    console.say(f"{path}: {report.format}")
    if report.invalid:
        console.table(
            [("line", {"justify": "right"}), "skipped: not valid"],
            [(str(line), console.shorten(reason, 100)) for line, reason in report.invalid],
        )
    added = _plural(report.added, "memory", "memories")
    existing = f"{report.skipped_existing} already in the store"
    if args.dry_run:
        console.say(f"dry run: would add {added} and skip {existing}; nothing was written")
    else:
        console.say(f"added {added}; skipped {existing}")
    if report.dropped_vectors:
        named = ", ".join(repr(m) for m in report.dropped_models)
        console.say(
            f"{report.dropped_vectors} vectors of another model ({named}) were left out: this store embeds with "
            f"{model_id}, so those memories wait for a vector like any new one"
        )
    if pending:
        console.say(
            f"{pending} wait for a vector from {model_id}: a running server embeds them in the background, or run "
            "`agentcache-mcp reembed` now (until then they are found by keyword)"
        )
    return 0


def _ingest_transcript(args: argparse.Namespace, settings: Settings) -> int:
    from .hooks.ingest import ingest_command

    return ingest_command(args, settings)


# auth


def _client_name(client: StoredClient | None) -> str:
    """What the client calls itself (RFC 7591 client_name, as it registered: shown, never trusted), on one line
    (its whitespace folded: a newline in it would forge a line of the confirmation), or '-'."""
    name = client.metadata.get("client_name") if client is not None else None
    return " ".join(name.split()) if isinstance(name, str) and name.strip() else "-"


def _client_strings(client: StoredClient, field: str) -> list[str]:
    value = client.metadata.get(field)
    if isinstance(value, str):
        return value.split()
    return [str(item) for item in value] if isinstance(value, list) else []


def _last_used(grants: list[Grant]) -> float | None:
    return max((g.last_used_at for g in grants if g.last_used_at is not None), default=None)


def _optional_iso(ts: float | None) -> str | None:
    from .memory.model import iso

    return None if ts is None else iso(ts)


def _auth(args: argparse.Namespace, settings: Settings) -> int:
    from . import console
    from .memory.model import iso

    action = args.auth_command
    with _store(settings, write=action in ("revoke", "remove-client")) as memory:
        state = memory.backend.auth_state
        clients = {c.client_id: c for c in state.list_clients()}
        if action in ("clients", "grants"):
            grants = state.list_grants(args.client if action == "grants" else None)
        elif action == "revoke":
            grant = next((g for g in state.list_grants() if g.grant_id == args.grant_id), None)
            if grant is None or not state.revoke_grant(args.grant_id):
                raise CommandFailed(f"no grant has the id {args.grant_id[:80]!r} (`auth grants` lists them)")
        else:
            removed_grants = state.list_grants(args.client_id)
            if not state.delete_client(args.client_id):
                raise CommandFailed(f"no client has the id {args.client_id[:200]!r} (`auth clients` lists them)")

    if action == "clients":
        by_client: dict[str, list[Grant]] = {}
        for g in grants:
            by_client.setdefault(g.client_id, []).append(g)
        if args.json:
            console.emit_json(
                {
                    "clients": [
                        {
                            "client_id": c.client_id,
                            "client_name": c.metadata.get("client_name"),
                            "redirect_uris": _client_strings(c, "redirect_uris"),
                            "scope": c.metadata.get("scope"),
                            "created_at": iso(c.created_at),
                            "last_used_at": _optional_iso(_last_used(by_client.get(c.client_id, []))),
                            "grants": len(by_client.get(c.client_id, [])),
                            "metadata": c.metadata,
                        }
                        for c in clients.values()
                    ]
                }
            )
            return 0
        if not clients:
            console.say("no OAuth client has registered with this store")
            return 0
        console.table(
            [
                "name",
                ("client id", console.WHOLE),
                ("grants", {"justify": "right"}),
                "created (UTC)",
                "last used (UTC)",
                "scopes",
                "redirect URIs",
            ],
            [
                (
                    console.shorten(_client_name(c), 40),
                    c.client_id,
                    str(len(by_client.get(c.client_id, []))),
                    console.when(c.created_at),
                    console.when(_last_used(by_client.get(c.client_id, []))),
                    " ".join(_client_strings(c, "scope")) or "-",
                    ", ".join(_client_strings(c, "redirect_uris")) or "-",
                )
                for c in clients.values()
            ],
        )
        return 0
    if action == "grants":
        if args.json:
            console.emit_json(
                {
                    "grants": [
                        {
                            "grant_id": g.grant_id,
                            "client_id": g.client_id,
                            "client_name": clients[g.client_id].metadata.get("client_name") if g.client_id in clients else None,
                            "scopes": list(g.scopes),
                            "resource": g.resource,
                            "created_at": iso(g.created_at),
                            "last_used_at": _optional_iso(g.last_used_at),
                        }
                        for g in grants
                    ]
                }
            )
            return 0
        if not grants:
            console.say("no grants" + (f" of client {args.client!r}" if args.client is not None else ""))
            return 0
        console.table(
            [
                ("grant id", console.WHOLE),
                "client name",
                "scopes",
                "created (UTC)",
                "last used (UTC)",
                ("client id", console.WHOLE),
            ],
            [
                (
                    g.grant_id,
                    console.shorten(_client_name(clients.get(g.client_id)), 40),
                    " ".join(g.scopes) or "-",
                    console.when(g.created_at),
                    console.when(g.last_used_at),
                    g.client_id,
                )
                for g in grants
            ],
        )
        return 0
    if action == "revoke":
        assert grant is not None
        if args.json:
            console.emit_json({"revoked": grant.grant_id, "client_id": grant.client_id})
        else:
            console.say(
                f"revoked grant {grant.grant_id} of {_client_name(clients.get(grant.client_id))} "
                f"({grant.client_id}): its access and refresh tokens stop working now"
            )
        return 0
    client = clients.get(args.client_id)
    if args.json:
        console.emit_json({"removed": args.client_id, "grants_revoked": [g.grant_id for g in removed_grants]})
    else:
        console.say(
            f"removed client {_client_name(client)} ({args.client_id}) and "
            f"{_plural(len(removed_grants), 'grant')}: its tokens stop working now. It may register again, but "
            "gets no token without the owner's approval on the consent page"
        )
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "recall": _recall,
    "list": _list,
    "show": _show,
    "forget": _forget,
    "stats": _stats,
    "erase": _erase,
    "reembed": _reembed,
    "backup": _backup,
    "export": _export,
    "import": _import,
    "ingest-transcript": _ingest_transcript,
    "auth": _auth,
}


