"""Export and import: our own JSONL format, and the official MCP memory server's knowledge-graph files.

Export streams page by page (constant memory whatever the store's size). Import reads the file twice: once to
check every line with the same rules as the tools (reporting each bad line by its number), once inside ONE
transaction that applies it, so a file with a bad line applies nothing unless `skip_invalid` is asked for.

Our format, one JSON object per line:
- line 1, the header: {"format": "agentcache-export", "version": 1, "schema": ..., "embedding_model": ...,
  "exported_at": ..., "namespaces": [...] or "all"}
- then one memory per line, in the store's order: id, namespace, text, tags, importance, metadata,
  created_at, updated_at, last_accessed_at, access_count, expires_at, superseded_by (times ISO 8601 UTC
  with microseconds), and with --with-vectors "vector": {"model", "dim", "float32_base64"}.
Importing it keeps ids, times and order (so recall ranks as it did on the original, neighbours included),
and adds nothing the store already has (same id, or same text in the namespace).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .model import Memory, content_hash, memory_fields, new_id
from .ports import Vector
from .service import MemoryService
from .validation import (
    MAX_TAG_CHARS,
    InvalidInput,
    parse_time,
    validate_ids,
    validate_importance,
    validate_metadata,
    validate_namespace,
    validate_tags,
    validate_text,
)

FORMAT = "agentcache-export"
VERSION = 1
PAGE = 500
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_REPORTED_ERRORS = 20


class ImportRefused(ValueError):
    """The file cannot be imported as it is; nothing was applied. The message says why (line numbers)."""


@dataclass(slots=True)
class ImportReport:
    format: str
    """'agentcache-export', 'official-memory-jsonl' or 'official-memory-json'."""
    added: int = 0
    skipped_existing: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reason) of each line skipped as invalid (with skip_invalid)."""
    applied: bool = False


# --- export ------------------------------------------------------------------------------------------------


def export_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def memory_record(m: Memory, vector: tuple[str, Vector] | None = None) -> dict[str, Any]:
    record = memory_fields(m, export_time)  # times to the microsecond, so an import keeps them exactly
    if vector is not None:
        model_id, values = vector
        data = np.asarray(values, dtype="<f4")
        record["vector"] = {
            "model": model_id,
            "dim": int(data.shape[0]),
            "float32_base64": base64.b64encode(data.tobytes()).decode("ascii"),
        }
    return record


def export_jsonl(
    memory: MemoryService,
    out: TextIO,
    *,
    namespaces: list[str] | None,
    with_vectors: bool,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the header and every memory (of these namespaces, else all) to `out`; returns how many."""
    scope = None if not namespaces else [validate_namespace(ns) for ns in namespaces]
    model_id = memory.embedder.model_id
    header = {
        "format": FORMAT,
        "version": VERSION,
        "schema": memory.backend.describe().get("schema_version"),
        "embedding_model": model_id,
        "exported_at": export_time(datetime.now(UTC).timestamp()),
        "namespaces": scope or "all",
    }
    out.write(json.dumps(header) + "\n")
    written = after = 0
    while True:
        page = memory.backend.memories.scan(after, PAGE, scope)
        if not page:
            break
        vectors = memory.backend.embeddings.vectors_of(model_id, [m.key for m in page]) if with_vectors else {}
        for m in page:
            vector = (model_id, vectors[m.key]) if m.key in vectors else None
            out.write(json.dumps(memory_record(m, vector), ensure_ascii=False) + "\n")
        written += len(page)
        after = page[-1].key
        if progress is not None:
            progress(written)
    return written


# --- reading files -----------------------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line; a line over MAX_LINE_BYTES is reported, not read whole."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise ImportRefused(f"line {number} is longer than {MAX_LINE_BYTES} bytes; nothing was imported")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ImportRefused(f"line {number} is not UTF-8 text; nothing was imported") from None
            if line.strip():
                yield number, line


def detect_format(path: Path) -> str:
    first = next(_lines(path), None)
    if first is None:
        raise ImportRefused(f"{path} is empty")
    try:
        head = json.loads(first[1])
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict) and head.get("format") == FORMAT:
        if head.get("version") != VERSION:
            raise ImportRefused(f"{path} is {FORMAT} version {head.get('version')!r}; this version reads {VERSION}")
        return FORMAT
    if isinstance(head, dict) and head.get("type") in ("entity", "relation"):
        return "official-memory-jsonl"
    if isinstance(head, dict) and "entities" in head:
        return "official-memory-json"
    if head is None:
        try:
            whole = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            whole = None
        if isinstance(whole, dict) and "entities" in whole:
            return "official-memory-json"
    raise ImportRefused(
        f"{path} is neither an agentcache-mcp export (its first line names the format) nor the official MCP "
        "memory server's file (JSONL lines with type entity/relation, or JSON with entities)"
    )


Record = tuple[str, Memory, tuple[str, Vector] | None]
"""(where, memory, vector): where names the line ('line 12', 'entities[3]') for error reports."""


def _records(
    path: Path, kind: str, namespace: str | None, default_namespace: str, max_text_bytes: int
) -> Iterator[Record | tuple[str, str]]:
    """Each item: a Record, or (where, reason) for an invalid one. Checked with the tools' rules."""
    if kind == FORMAT:
        lines = _lines(path)
        next(lines)  # the header
        for number, line in lines:
            where = f"line {number}"
            try:
                memory, vector = _own_record(json.loads(line), namespace, max_text_bytes)
            except (json.JSONDecodeError, InvalidInput, KeyError, TypeError, ValueError) as exc:
                yield where, _reason(exc)
                continue
            yield where, memory, vector
        return
    target = validate_namespace(namespace or default_namespace)
    now = datetime.now(UTC).timestamp()
    if kind == "official-memory-jsonl":
        items: Iterator[tuple[str, Any]] = ((f"line {number}", _json_or_error(line)) for number, line in _lines(path))
    else:
        graph = json.loads(path.read_text(encoding="utf-8"))
        items = iter(
            [(f"entities[{i}]", {"type": "entity", **e}) for i, e in enumerate(graph.get("entities") or [])]
            + [(f"relations[{i}]", {"type": "relation", **r}) for i, r in enumerate(graph.get("relations") or [])]
        )
    for where, item in items:
        try:
            if isinstance(item, Exception):
                raise item
            for text, tags in _graph_memories(item):
                yield where, _new_memory(target, text, tags, now, max_text_bytes), None
        except (InvalidInput, KeyError, TypeError, ValueError) as exc:
            yield where, _reason(exc)


def _json_or_error(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return exc


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return str(exc)


def _graph_memories(item: Any) -> list[tuple[str, list[str]]]:
    """The memories one knowledge-graph line becomes: an entity's observations, or a relation."""
    if not isinstance(item, dict):
        raise InvalidInput("expected a JSON object")
    if item.get("type") == "entity":
        name, kind, observations = _text_field(item, "name"), _text_field(item, "entityType"), item["observations"]
        if not isinstance(observations, list) or not all(isinstance(o, str) for o in observations):
            raise InvalidInput("observations must be a list of strings")
        tags = [_tag(kind), _tag(name)]
        return [(f"{name} ({kind}): {o.strip()}", tags) for o in observations if o.strip()]
    if item.get("type") == "relation":
        source, target, relation = _text_field(item, "from"), _text_field(item, "to"), _text_field(item, "relationType")
        return [(f"{source} {relation} {target}", ["relation", _tag(source), _tag(target)])]
    raise InvalidInput(f"type must be 'entity' or 'relation', got {item.get('type')!r}")


def _text_field(item: dict[str, Any], name: str) -> str:
    value = item[name]
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string")
    return value.strip()


def _tag(value: str) -> str:
    return value[:MAX_TAG_CHARS].strip()


def _new_memory(namespace: str, text: str, tags: list[str], now: float, max_text_bytes: int) -> Memory:
    text = validate_text(text, max_text_bytes)
    return Memory(
        key=0,
        id=new_id(),
        namespace=namespace,
        text=text,
        tags=validate_tags(tags),
        importance=0.5,
        metadata={"source": "mcp-memory-server"},
        created_at=now,
        updated_at=now,
        last_accessed_at=None,
        access_count=0,
        expires_at=None,
        superseded_by=None,
        content_hash=content_hash(text),
    )


def _own_record(raw: Any, namespace: str | None, max_text_bytes: int) -> tuple[Memory, tuple[str, Vector] | None]:
    if not isinstance(raw, dict):
        raise InvalidInput("expected a JSON object")
    unknown = set(raw) - {*_OWN_FIELDS, "vector"}
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(sorted(unknown))}")
    [memory_id] = validate_ids([raw["id"]], "id")
    text = validate_text(raw["text"], max_text_bytes)
    created = _required_time(raw, "created_at")
    updated = _required_time(raw, "updated_at")
    access_count = raw.get("access_count", 0)
    if isinstance(access_count, bool) or not isinstance(access_count, int) or access_count < 0:
        raise InvalidInput("access_count must be a whole number >= 0")
    superseded_by = raw.get("superseded_by")
    if superseded_by is not None:
        [superseded_by] = validate_ids([superseded_by], "superseded_by")
    memory = Memory(
        key=0,
        id=memory_id,
        namespace=validate_namespace(namespace or raw["namespace"]),
        text=text,
        tags=validate_tags(raw.get("tags", [])),
        importance=validate_importance(raw.get("importance", 0.5)),
        metadata=validate_metadata(raw.get("metadata", {})),
        created_at=created,
        updated_at=max(updated, created),
        last_accessed_at=parse_time(raw.get("last_accessed_at"), "last_accessed_at"),
        access_count=access_count,
        expires_at=parse_time(raw.get("expires_at"), "expires_at"),
        superseded_by=superseded_by,
        content_hash=content_hash(text),
    )
    return memory, _vector(raw.get("vector"))


_OWN_FIELDS = {
    "id",
    "namespace",
    "text",
    "tags",
    "importance",
    "metadata",
    "created_at",
    "updated_at",
    "last_accessed_at",
    "access_count",
    "expires_at",
    "superseded_by",
}


def _required_time(raw: dict[str, Any], name: str) -> float:
    value = parse_time(raw[name], name)
    if value is None:
        raise InvalidInput(f"{name} is required")
    return value


def _vector(raw: Any) -> tuple[str, Vector] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str) or not raw["model"]:
        raise InvalidInput("vector must be an object with model, dim and float32_base64")
    dim = raw.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 8192:
        raise InvalidInput("vector.dim must be a whole number from 1 to 8192")
    try:
        data = base64.b64decode(raw["float32_base64"], validate=True)
    except (binascii.Error, TypeError, KeyError):
        raise InvalidInput("vector.float32_base64 is not base64") from None
    if len(data) != 4 * dim:
        raise InvalidInput(f"vector has {len(data) // 4} values, dim says {dim}")
    values = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(values).all():
        raise InvalidInput("vector has values that are not finite numbers")
    return raw["model"], values


# --- import ------------------------------------------------------------------------------------------------


def import_jsonl(
    memory: MemoryService,
    path: Path,
    *,
    namespace: str | None,
    dry_run: bool,
    skip_invalid: bool,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Check the whole file, then apply it in one transaction (or, with dry_run, say what it would do).

    `namespace`: the official server's files go there (default: the configured namespace); our own exports
    keep their namespaces unless one is given. `progress(done, total)` is called as records are applied.
    """
    if namespace is not None:
        namespace = validate_namespace(namespace)
    kind = detect_format(path)
    report = ImportReport(format=kind)
    default_namespace = memory.limits.namespace

    def records() -> Iterator[Record | tuple[str, str]]:
        return _records(path, kind, namespace, default_namespace, memory.limits.max_text_bytes)

    total = 0
    for item in records():
        if len(item) == 2:
            where, reason = item[0], item[1]
            number = _line_number(where)
            report.invalid.append((number, reason if where.startswith("line") else f"{where}: {reason}"))
        else:
            total += 1
    if report.invalid and not skip_invalid:
        shown = "; ".join(f"line {n}: {reason}" for n, reason in report.invalid[:MAX_REPORTED_ERRORS])
        more = len(report.invalid) - MAX_REPORTED_ERRORS
        raise ImportRefused(
            f"{len(report.invalid)} invalid line(s), nothing was imported ({shown}{f'; and {more} more' if more > 0 else ''}). "
            "Fix them, or import the valid lines with --skip-invalid."
        )
    if dry_run:
        for page in _pages(_valid(records())):
            existing = _existing(memory, [m for m, _ in page])
            report.skipped_existing += len(existing)
            report.added += len(page) - len(existing)
        return report

    done = 0

    def applied() -> Iterator[tuple[Memory, tuple[str, Vector] | None]]:
        nonlocal done
        for item in _valid(records()):
            yield item
            done += 1
            if progress is not None and done % PAGE == 0:
                progress(done, total)

    report.added, report.skipped_existing = memory.backend.memories.restore(applied())
    report.applied = True
    if progress is not None:
        progress(done, total)
    if report.added:
        for callback in memory.on_remember:
            callback()
    return report


def _valid(records: Iterator[Record | tuple[str, str]]) -> Iterator[tuple[Memory, tuple[str, Vector] | None]]:
    for item in records:
        if len(item) == 3:
            _, m, vector = item
            yield m, vector


def _pages(items: Iterator[tuple[Memory, tuple[str, Vector] | None]]) -> Iterator[list[tuple[Memory, Any]]]:
    page: list[tuple[Memory, Any]] = []
    for item in items:
        page.append(item)
        if len(page) == PAGE:
            yield page
            page = []
    if page:
        yield page


def _existing(memory: MemoryService, page: list[Memory]) -> set[str]:
    """Ids of this page that the store already has, by id or by text in the namespace (an import skips them)."""
    stored = memory.backend.memories.get(None, [m.id for m in page])
    found = {m.id for m in stored}
    by_content = {
        (m.namespace, m.content_hash)
        for m in memory.backend.memories.find_by_content(
            [(m.namespace, m.content_hash) for m in page if m.id not in found]
        )
    }
    return found | {m.id for m in page if (m.namespace, m.content_hash) in by_content}


def _line_number(where: str) -> int:
    """'line 12' -> 12; 'entities[3]' (a single-JSON file) -> 4, its position counted from 1."""
    digits = "".join(ch for ch in where if ch.isdigit())
    return (int(digits) + (0 if where.startswith("line") else 1)) if digits else 0
