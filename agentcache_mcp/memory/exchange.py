"""Export and import: our own JSONL format, and the official MCP memory server's knowledge-graph files.

Export streams page by page (constant memory whatever the store's size). Import reads the file once, into a
private unnamed copy that the check and the apply both read (a file changed during an import is never applied
unchecked); checks every line against this store (the tools' rules, times every read can show, vectors of this
store's model and dimension, ids and supersession confined to a namespace), reporting each bad line by its
number; and only then applies it, in batches of at most BATCH_MEMORIES memories and about BATCH_SECONDS each,
letting go of the write lock between them, so a large import never holds up another process's write for long.
A refused file changes nothing; a failure while applying leaves whole batches, and the same import run again
adds the rest (what is already stored is skipped). The batches run inside the backend's `bulk_load`: a large
import into PostgreSQL loads without the HNSW index and builds it at the end (see PostgresBackend.bulk_load).

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
import codecs
import json
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from ..embeddings import Embedder, EmbeddingModelError
from .model import Memory, content_hash, memory_fields, new_id
from .ports import Vector
from .service import MemoryService
from .validation import (
    MAX_TAG_CHARS,
    InvalidInput,
    check_text_chars,
    validate_access_count,
    validate_importance,
    validate_metadata,
    validate_namespace,
    validate_stored_id,
    validate_stored_time,
    validate_tags,
    validate_text,
)

FORMAT = "agentcache-export"
VERSION = 1
PAGE = 500
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_REPORTED_ERRORS = 20

BATCH_MEMORIES = 500
"""At most this many memories per transaction."""
BATCH_SECONDS = 0.25
"""And at most about this long: a batch stops taking memories once it has run this long, so another process's
write waits at most about this (plus one insert) for the write lock."""
# Between batches the import lets go of the write lock for the backend's batch_pause_s (SQLite: 0.12 s).


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
    batches: int = 0
    """Transactions applied (each a whole batch of memories)."""
    dropped_vectors: int = 0
    """Vectors left out because they are not of this store's model (those memories wait for embedding)."""
    dropped_models: list[str] = field(default_factory=list)
    """The models they named (a few)."""


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


class Snapshot:
    """The file, read once into a private copy (an unnamed temporary file, constant memory) that the check and
    the apply both read: a file swapped, rewritten or appended to during an import is never applied unchecked."""

    def __init__(self, path: Path):
        self.file: BinaryIO = tempfile.TemporaryFile(prefix="agentcache-import-")  # noqa: SIM115 (closed by close())
        try:
            with path.open("rb") as source:
                shutil.copyfileobj(source, self.file, 1024 * 1024)
        except BaseException:
            self.file.close()
            raise

    def lines(self) -> Iterator[tuple[int, str]]:
        """(line number, text) of each non-blank line; a UTF-8 byte order mark before line 1 is dropped."""
        self.file.seek(0)
        number = 0
        while True:
            raw = self.file.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise ImportRefused(f"line {number} is longer than {MAX_LINE_BYTES} bytes; nothing was imported")
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ImportRefused(f"line {number} is not UTF-8 text; nothing was imported") from None
            if line.strip():
                yield number, line

    def whole(self) -> str:
        self.file.seek(0)
        data = self.file.read()
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ImportRefused(f"the file is not UTF-8 text (byte {exc.start}); nothing was imported") from None

    def close(self) -> None:
        self.file.close()


class _Unusable:
    """What a JSON number no field can hold parses to (more than 20 digits, beyond a float's range, NaN or
    Infinity), so the check names the field (see _unusable_number) instead of failing inside the JSON parser
    (Python refuses ints of over 4300 digits with a ValueError) or storing a value no read can use."""

    def __init__(self, reason: str):
        self.reason = reason


_OUT_OF_RANGE = _Unusable("a number out of range (beyond 64-bit integers or floats)")


_INT64_MAX = 2**63 - 1
_parsed = threading.local()
"""unusable: whether the parse running in this thread met a number no field can hold (then _record_json looks
for its field; walking every line's fields to build their paths was the slowest part of reading a file)."""


def _parse_int(text: str) -> int | _Unusable:
    if len(text) > 20:
        _parsed.unusable = True
        return _OUT_OF_RANGE
    value = int(text)
    if abs(value) > _INT64_MAX:
        _parsed.unusable = True
    return value


def _parse_float(text: str) -> float | _Unusable:
    value = float(text)
    if math.isfinite(value):
        return value
    _parsed.unusable = True
    return _OUT_OF_RANGE


def _parse_constant(name: str) -> _Unusable:
    _parsed.unusable = True
    return _Unusable(f"{name} is not a number (JSON has no NaN or Infinity)")


def strict_json(text: str) -> Any:
    """json.loads with the limits every field check relies on: numbers no field can hold (NaN, Infinity,
    over 20 digits, beyond a float) parse to a marker that _unusable_number finds by field; nesting too deep
    for the parser is refused as such."""
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:
        raise InvalidInput("not JSON this can read: arrays or objects nested too deeply") from None


def _unusable_number(value: Any) -> str | None:
    """'field: why' for the first number in value that no field can hold ('metadata.n', 'created_at'), if
    any. Iterative: a value nested as deep as the parser allows must not overflow the stack here either."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, _Unusable):
            return f"{path or 'the value'}: {item.reason}"
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > _INT64_MAX:
            return f"{path or 'the value'}: {_OUT_OF_RANGE.reason}"
        if isinstance(item, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None


def _record_json(line: str) -> Any:
    _parsed.unusable = False
    raw = strict_json(line)
    if _parsed.unusable:
        unusable = _unusable_number(raw)
        if unusable is not None:
            raise InvalidInput(unusable)
    return raw


def detect_format(snapshot: Snapshot, path: Path) -> str:
    first = next(snapshot.lines(), None)
    if first is None:
        raise ImportRefused(f"{path} is empty")
    try:
        head = strict_json(first[1])
    except json.JSONDecodeError:
        head = None
    except InvalidInput as exc:
        raise ImportRefused(f"line {first[0]}: {exc}; nothing was imported") from None
    if isinstance(head, dict) and head.get("format") == FORMAT:
        if head.get("version") != VERSION:
            raise ImportRefused(
                f"{path} is {FORMAT} version {head.get('version')!r:.40}; this version reads {VERSION}"
            )
        return FORMAT
    if isinstance(head, dict) and head.get("type") in ("entity", "relation"):
        return "official-memory-jsonl"
    if isinstance(head, dict) and "entities" in head:
        return "official-memory-json"
    if head is None:
        try:
            whole = strict_json(snapshot.whole())
        except (json.JSONDecodeError, InvalidInput, ImportRefused):
            whole = None
        if isinstance(whole, dict) and "entities" in whole:
            return "official-memory-json"
    raise ImportRefused(
        f"{path} is neither an agentcache-mcp export (its first line names the format) nor the official MCP "
        "memory server's file (JSONL lines with type entity/relation, or JSON with entities)"
    )


class StoreModel:
    """The embedding model of the store an import goes into: a vector is kept only if it is this model's, of its
    dimension. The dimension is learnt when a vector names the model (loading it, for a sentence-transformers
    model: a few seconds, once)."""

    def __init__(self, embedder: Embedder):
        self.model_id = embedder.model_id
        self._embedder = embedder
        self._dim: int | None = None
        self._known = False

    @property
    def dim(self) -> int | None:
        """None: the model could not be loaded to learn it (its vectors are then dropped, to be embedded)."""
        if not self._known:
            try:
                self._dim = int(self._embedder.dim)
            except EmbeddingModelError:
                self._dim = None
            self._known = True
        return self._dim


@dataclass(slots=True)
class Record:
    where: str
    """'line 12', or 'entities[3]' in a single-JSON file: named in error reports."""
    memory: Memory
    vector: tuple[str, Vector] | None
    dropped_model: str | None = None
    """The model of a vector dropped because it is not the store's (the memory waits for embedding)."""


@dataclass(slots=True)
class Refusal:
    where: str
    reason: str


def _records(
    snapshot: Snapshot, kind: str, namespace: str | None, default_namespace: str, max_text_bytes: int, model: StoreModel
) -> Iterator[Record | Refusal]:
    """Each line's memories, checked with the tools' rules and this store's limits, or why it is refused."""
    if kind == FORMAT:
        lines = snapshot.lines()
        next(lines)  # the header
        for number, line in lines:
            where = f"line {number}"
            try:
                memory, vector, dropped = _own_record(_record_json(line), namespace, max_text_bytes, model)
            except (json.JSONDecodeError, InvalidInput, KeyError) as exc:
                yield Refusal(where, _reason(exc))
                continue
            yield Record(where, memory, vector, dropped)
        return
    target = validate_namespace(namespace or default_namespace)
    now = datetime.now(UTC).timestamp()
    items: Iterator[tuple[str, Any]]
    if kind == "official-memory-jsonl":
        items = ((f"line {number}", _json_or_error(line)) for number, line in snapshot.lines())
    else:
        items = _graph_items(snapshot)
    for where, item in items:
        try:
            if isinstance(item, Exception):
                raise item
            built = [  # all of the line, or none of it
                Record(where, _new_memory(target, text, tags, now, max_text_bytes), None)
                for text, tags in _graph_memories(item, max_text_bytes)
            ]
        except (json.JSONDecodeError, InvalidInput, KeyError) as exc:
            yield Refusal(where, _reason(exc))
            continue
        yield from built


def _graph_items(snapshot: Snapshot) -> Iterator[tuple[str, Any]]:
    """The entities and relations of a single-JSON file (the official server's older memory.json)."""
    try:
        graph = _record_json(snapshot.whole())
    except (json.JSONDecodeError, InvalidInput) as exc:
        raise ImportRefused(f"the file cannot be read: {_reason(exc)}; nothing was imported") from None
    if not isinstance(graph, dict):
        raise ImportRefused("the file must hold one JSON object with entities and relations; nothing was imported")
    for part, kind in (("entities", "entity"), ("relations", "relation")):
        listed = graph.get(part) or []
        if not isinstance(listed, list):
            raise ImportRefused(f"{part} must be a list; nothing was imported")
        for i, item in enumerate(listed):
            yield f"{part}[{i}]", ({"type": kind, **item} if isinstance(item, dict) else item)


def _json_or_error(line: str) -> Any:
    try:
        return _record_json(line)
    except (json.JSONDecodeError, InvalidInput) as exc:
        return exc


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return str(exc)


def _graph_memories(item: Any, max_text_bytes: int) -> list[tuple[str, list[str]]]:
    """The memories one knowledge-graph line becomes: an entity's observations, or a relation."""
    if not isinstance(item, dict):
        raise InvalidInput("expected a JSON object")
    if item.get("type") == "entity":
        name, kind = _text_field(item, "name"), _text_field(item, "entityType")
        observations = item.get("observations", [])
        if not isinstance(observations, list):
            raise InvalidInput("observations must be a list of strings")
        out = []
        for i, observation in enumerate(observations):
            if not isinstance(observation, str):
                raise InvalidInput(f"observations[{i}] must be a string, got {_json_type(observation)}")
            check_text_chars(observation, f"observations[{i}]")
            if observation.strip():
                out.append((f"{name} ({kind}): {observation.strip()}", [_tag(kind), _tag(name)]))
        return out
    if item.get("type") == "relation":
        source, target, relation = _text_field(item, "from"), _text_field(item, "to"), _text_field(item, "relationType")
        return [(f"{source} {relation} {target}", ["relation", _tag(source), _tag(target)])]
    raise InvalidInput(f"type must be 'entity' or 'relation', got {_json_type(item.get('type'))}")


def _json_type(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:40])
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _text_field(item: dict[str, Any], name: str) -> str:
    value = item[name]
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string, got {_json_type(value)}")
    check_text_chars(value, name)
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


def _own_record(
    raw: Any, namespace: str | None, max_text_bytes: int, model: StoreModel
) -> tuple[Memory, tuple[str, Vector] | None, str | None]:
    if not isinstance(raw, dict):
        raise InvalidInput("expected a JSON object")
    unknown = set(raw) - {*_OWN_FIELDS, "vector"}
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(repr(k[:40]) for k in sorted(unknown)[:5])}")
    memory_id = validate_stored_id(raw["id"], "id")
    text = validate_text(raw["text"], max_text_bytes)
    created = _required_time(raw, "created_at")
    updated = _required_time(raw, "updated_at")
    superseded_by = raw.get("superseded_by")
    if superseded_by is not None:
        superseded_by = validate_stored_id(superseded_by, "superseded_by")
        if superseded_by == memory_id:
            superseded_by = None  # superseded by itself: the same as not superseded (and never hidden)
    memory = Memory(
        key=0,
        id=memory_id,
        namespace=validate_namespace(namespace or raw["namespace"]),
        text=text,
        tags=validate_tags(_list_field(raw, "tags")),
        importance=validate_importance(raw.get("importance", 0.5)),
        metadata=validate_metadata(raw.get("metadata", {})),
        created_at=created,
        updated_at=max(updated, created),
        last_accessed_at=validate_stored_time(raw.get("last_accessed_at"), "last_accessed_at"),
        access_count=validate_access_count(raw.get("access_count", 0)),
        expires_at=validate_stored_time(raw.get("expires_at"), "expires_at"),
        superseded_by=superseded_by,
        content_hash=content_hash(text),
    )
    vector, dropped = _vector(raw.get("vector"), model)
    return memory, vector, dropped


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

UNIT_TOLERANCE = 1e-3
"""How far from 1 a vector's length may be: every embedder writes unit vectors (float32: ~1e-7 off)."""


def _list_field(raw: dict[str, Any], name: str) -> list[Any]:
    value = raw.get(name) or []
    if not isinstance(value, list):
        raise InvalidInput(f"{name} must be a list of strings, got {_json_type(value)}")
    return value


def _required_time(raw: dict[str, Any], name: str) -> float:
    value = validate_stored_time(raw[name], name)
    if value is None:
        raise InvalidInput(f"{name} is required")
    return value


def _vector(raw: Any, model: StoreModel) -> tuple[tuple[str, Vector] | None, str | None]:
    """(the vector to store, or None; the model of a well-formed vector dropped because it is not the
    store's). A damaged vector (not base64, wrong length, not finite, not unit length) refuses its line,
    whatever its model: the file is not what an export writes."""
    if raw is None:
        return None, None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str) or not raw["model"]:
        raise InvalidInput("vector must be an object with model, dim and float32_base64")
    unknown = set(raw) - {"model", "dim", "float32_base64"}
    if unknown:
        raise InvalidInput(f"vector has unknown field(s) {', '.join(repr(k[:40]) for k in sorted(unknown)[:5])}")
    dim = raw.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 8192:
        raise InvalidInput("vector.dim must be a whole number from 1 to 8192")
    encoded = raw.get("float32_base64")
    if not isinstance(encoded, str):
        raise InvalidInput("vector.float32_base64 must be a base64 string")
    try:
        data = binascii.a2b_base64(encoded, strict_mode=True)  # what b64decode(validate=True) calls
    except (binascii.Error, ValueError):
        raise InvalidInput("vector.float32_base64 is not base64") from None
    if len(data) != 4 * dim:
        raise InvalidInput(f"vector.float32_base64 holds {len(data) / 4:g} float32 values, vector.dim says {dim}")
    values = np.frombuffer(data, dtype="<f4").astype(np.float32)
    # One dot product (float32: ~1e-6 off for a unit vector, well inside the tolerance): a NaN or infinity
    # anywhere makes it non-finite, and so does an overflow (values no unit vector holds: refused below by
    # their length); the element-wise check runs only then, to say which.
    with np.errstate(over="ignore", invalid="ignore"):
        squared = float(np.dot(values, values))
    if not math.isfinite(squared) and not np.isfinite(values).all():
        raise InvalidInput("vector has values that are not finite numbers")
    norm = math.sqrt(squared)
    if abs(norm - 1.0) > UNIT_TOLERANCE:
        raise InvalidInput(f"vector has length {norm:.4g}; an embedding is a unit vector")
    if raw["model"] != model.model_id or model.dim is None:  # (dim: only now, for a vector of the store's model)
        return None, raw["model"]
    if dim != model.dim:
        raise InvalidInput(f"vector.dim is {dim}, but {model.model_id} (this store's model) has {model.dim}")
    return (model.model_id, values), None


# --- import ------------------------------------------------------------------------------------------------


class ImportInterrupted(RuntimeError):
    """Applying stopped part-way: `report` says what was applied (whole batches). Importing the same file again
    adds the rest, and nothing twice."""

    def __init__(self, report: ImportReport, cause: BaseException):
        why = "interrupted" if isinstance(cause, KeyboardInterrupt) else str(cause) or type(cause).__name__
        super().__init__(
            f"stopped after {report.added} memories were added (in {report.batches} whole "
            f"{'batch' if report.batches == 1 else 'batches'}): {why}. "
            "Import the same file again to add the rest: what is already there is skipped, nothing is added twice."
        )
        self.report = report


@dataclass(slots=True)
class _Plan:
    """What the check found: the refused lines, and the decisions the apply follows."""

    valid: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    """where -> reason."""
    unlinked: set[str] = field(default_factory=set)
    """Lines whose superseded_by names no memory in the file or the store: stored as not superseded (what a
    dangling pointer means to every read, without the risk of a later memory taking that id)."""
    stands_for: dict[str, str] = field(default_factory=dict)
    """id -> the id of the memory with its text and namespace (stored, or earlier in the file), of the records
    skipped for that memory: a superseded_by naming a skipped record names that memory instead."""
    repeated: set[tuple[str, str]] = field(default_factory=set)
    """(where, id) of the records that repeat an earlier line's memory exactly: skipped, never applied (the
    check of the first stands for both)."""
    added: int = 0
    skipped: int = 0
    dropped_vectors: int = 0
    dropped_models: set[str] = field(default_factory=set)

    def refuse_counted(self, where: str, reason: str, *, skipped: bool) -> None:
        """Refuse a line that an earlier pass counted as valid (to be added, or skipped as already stored)."""
        self.refused[where] = reason
        self.valid -= 1
        if skipped:
            self.skipped -= 1
        else:
            self.added -= 1


def _check(memory: MemoryService, records: Iterator[Record | Refusal]) -> _Plan:
    """Every record against the file's other records and against this store, before anything is written."""
    plan = _Plan()
    skipped: set[str] = set()
    """Records counted as skipped (already stored, or twice in the file)."""
    in_file: dict[str, tuple[str, str, str]] = {}
    """id -> (namespace, content_hash, where) of each record seen."""
    contents: dict[tuple[str, str], str] = {}
    """(namespace, content_hash) -> the id of the first record with it."""
    references: list[tuple[str, str, str]] = []
    """(where, namespace, superseded_by) of the records that name one."""
    successor: dict[str, str] = {}
    """id -> the id it is superseded by, of the records that name one."""
    page: list[Record] = []

    def check_page() -> None:
        stored = {m.id: m for m in memory.backend.memories.get(None, [r.memory.id for r in page])}
        by_content = {
            (m.namespace, m.content_hash): m.id
            for m in memory.backend.memories.find_by_content(
                [(r.memory.namespace, r.memory.content_hash) for r in page if r.memory.id not in stored]
            )
        }
        # A memory of the store may still name an id no memory has (written by an import before these checks):
        # a new memory with that id in another namespace would hide it there.
        named_by: dict[str, set[str]] = {}
        for by, namespace in memory.backend.memories.superseding([r.memory.id for r in page if r.memory.id not in stored]):
            named_by.setdefault(by, set()).add(namespace)
        for r in page:
            m, there = r.memory, stored.get(r.memory.id)
            if there is not None and (there.namespace, there.content_hash) != (m.namespace, m.content_hash):
                where = "in namespace " + repr(there.namespace) if there.namespace != m.namespace else "with other text"
                plan.refused[r.where] = f"id {m.id!r} is already the id of another memory of this store ({where})"
                continue
            others = sorted(named_by.get(m.id, set()) - {m.namespace})
            if others:
                plan.refused[r.where] = (
                    f"id {m.id!r} is what a memory of namespace {others[0]!r} names as superseding it: stored in "
                    f"namespace {m.namespace!r}, it would hide that memory"
                )
                continue
            same = by_content.get((m.namespace, m.content_hash)) or contents.get((m.namespace, m.content_hash))
            if there is not None or same is not None:
                plan.skipped += 1
                skipped.add(r.where)
                if there is None and same is not None:
                    plan.stands_for[m.id] = same
            else:
                plan.added += 1
            contents.setdefault((m.namespace, m.content_hash), m.id)
            plan.valid += 1
        page.clear()

    for item in records:
        if isinstance(item, Refusal):
            plan.refused[item.where] = item.reason
            continue
        m = item.memory
        if item.dropped_model is not None:
            plan.dropped_vectors += 1
            if len(plan.dropped_models) < 5:
                plan.dropped_models.add(item.dropped_model[:80])
        seen = in_file.get(m.id)
        if seen is not None:
            if seen[:2] != (m.namespace, m.content_hash):
                plan.refused[item.where] = f"id {m.id!r} is also the id of another memory, on {seen[2]}"
            else:
                plan.repeated.add((item.where, m.id))
                plan.skipped += 1
            continue
        in_file[m.id] = (m.namespace, m.content_hash, item.where)
        if m.superseded_by is not None:
            references.append((item.where, m.namespace, m.superseded_by))
            successor[m.id] = m.superseded_by
        page.append(item)
        if len(page) == PAGE:
            check_page()
    check_page()

    # superseded_by: a memory of the same namespace (in the file or the store), so an import can never hide a
    # memory of one namespace behind one of another. Checked once every id of the file is known (an export
    # lists a correction after what it corrects).
    outside = [target for where, _, target in references if target not in in_file and where not in plan.refused]
    stored_namespace: dict[str, str] = {}
    for start in range(0, len(outside), PAGE):
        for m in memory.backend.memories.get(None, outside[start : start + PAGE]):
            stored_namespace[m.id] = m.namespace
    for where, namespace, target in references:
        if where in plan.refused:
            continue
        if target in in_file and in_file[target][2] not in plan.refused:
            found: str | None = in_file[target][0]
        else:
            found = stored_namespace.get(target)
        if found is None:
            plan.unlinked.add(where)
        elif found != namespace:
            plan.refuse_counted(
                where,
                f"superseded_by {target!r} is a memory of namespace {found!r}, not {namespace!r}: a memory is only "
                "superseded by one of its own namespace",
                skipped=where in skipped,
            )
    _drop_refused_stand_ins(plan, in_file)
    # A cycle (a -> b -> a) hides every memory of it, with nothing live left to stand for them; no export
    # holds one (a memory is only superseded by a live one). Each id is walked once: linear in the file.
    # (as the apply stores them: a skipped record is not stored, and a pointer to one names the memory it stands for)
    links = {
        i: plan.stands_for.get(t, t)
        for i, t in successor.items()
        if in_file[i][2] not in plan.refused and in_file[i][2] not in plan.unlinked and i not in plan.stands_for
    }
    state: dict[str, int] = {}  # 1: on the walk now, 2: done
    for first in links:
        walk: list[str] = []
        at: str | None = first
        while at is not None and at in links and at not in state:
            state[at] = 1
            walk.append(at)
            at = links[at]
        if at is not None and state.get(at) == 1:  # came back to this walk: the ids from `at` on are a cycle
            cycle = walk[walk.index(at) :]
            for memory_id in cycle:
                where = in_file[memory_id][2]
                if where in plan.refused:
                    continue
                plan.refuse_counted(
                    where,
                    f"superseded_by {links[memory_id]!r} closes a cycle of {len(cycle)} memories superseding "
                    "each other: every one would be hidden",
                    skipped=where in skipped,
                )
        for memory_id in walk:
            state[memory_id] = 2
    _drop_refused_stand_ins(plan, in_file)
    return plan


def _drop_refused_stand_ins(plan: _Plan, in_file: dict[str, tuple[str, str, str]]) -> None:
    """A record skipped for the text of a line refused after all is applied itself (the apply inserts every
    line not refused; the store's unique text index decides), so what names it keeps naming it."""
    plan.stands_for = {
        skipped_id: same
        for skipped_id, same in plan.stands_for.items()
        if same not in in_file or in_file[same][2] not in plan.refused
    }


def import_jsonl(
    memory: MemoryService,
    path: Path,
    *,
    namespace: str | None,
    dry_run: bool,
    skip_invalid: bool,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = BATCH_MEMORIES,
) -> ImportReport:
    """Read the file once, check all of it against this store, then apply it in batches (or, with dry_run,
    say what it would do).

    `namespace`: the official server's files go there (default: the configured namespace); our own exports
    keep their namespaces unless one is given. `progress(done, total)` is called after each batch.
    A refused file changes nothing. A failure while applying raises ImportInterrupted: the batches before it
    are applied, and importing the same file again adds the rest, nothing twice.
    """
    if namespace is not None:
        namespace = validate_namespace(namespace)
    snapshot = Snapshot(path)
    try:
        return _import(memory, snapshot, path, namespace, dry_run, skip_invalid, progress, batch_size)
    finally:
        snapshot.close()


def _import(
    memory: MemoryService,
    snapshot: Snapshot,
    path: Path,
    namespace: str | None,
    dry_run: bool,
    skip_invalid: bool,
    progress: Callable[[int, int], None] | None,
    batch_size: int,
) -> ImportReport:
    kind = detect_format(snapshot, path)
    report = ImportReport(format=kind)
    model = StoreModel(memory.embedder)

    def records() -> Iterator[Record | Refusal]:
        return _records(snapshot, kind, namespace, memory.limits.namespace, memory.limits.max_text_bytes, model)

    plan = _check(memory, records())
    report.invalid = sorted(((_line_number(w), _shown_reason(w, r)) for w, r in plan.refused.items()), key=lambda x: x[0])
    report.dropped_vectors, report.dropped_models = plan.dropped_vectors, sorted(plan.dropped_models)
    if report.invalid and not skip_invalid:
        shown = "; ".join(f"line {n}: {reason}" for n, reason in report.invalid[:MAX_REPORTED_ERRORS])
        more = len(report.invalid) - MAX_REPORTED_ERRORS
        raise ImportRefused(
            f"{len(report.invalid)} invalid line(s), nothing was imported ({shown}{f'; and {more} more' if more > 0 else ''}). "
            "Fix them, or import the valid lines with --skip-invalid."
        )
    if dry_run:
        report.added, report.skipped_existing = plan.added, plan.skipped
        return report

    total = plan.valid

    def valid() -> Iterator[tuple[Memory, tuple[str, Vector] | None]]:
        for item in records():
            if isinstance(item, Refusal) or item.where in plan.refused or (item.where, item.memory.id) in plan.repeated:
                continue
            if item.where in plan.unlinked:
                item.memory.superseded_by = None
            elif item.memory.superseded_by in plan.stands_for:
                item.memory.superseded_by = plan.stands_for[item.memory.superseded_by]
            yield item.memory, item.vector

    report.skipped_existing = len(plan.repeated)
    try:
        # A large import loads without the index the backend builds faster afterwards (rebuilt on any exit).
        with memory.backend.bulk_load(plan.added):
            _apply(memory, valid(), report, total, progress, batch_size)
    except (Exception, KeyboardInterrupt) as exc:  # Ctrl-C too: say what stayed applied
        raise ImportInterrupted(report, exc) from exc
    finally:
        if report.added:
            for callback in memory.on_remember:
                callback()
    report.applied = True
    return report


def _apply(
    memory: MemoryService,
    items: Iterator[tuple[Memory, tuple[str, Vector] | None]],
    report: ImportReport,
    total: int,
    progress: Callable[[int, int], None] | None,
    batch_size: int,
) -> None:
    done = 0
    pending: list[tuple[Memory, tuple[str, Vector] | None]] = []
    exhausted = False
    while True:
        while not exhausted and len(pending) < batch_size:  # parsed before the transaction, not inside it
            item = next(items, None)
            if item is None:
                exhausted = True
            else:
                pending.append(item)
        if not pending:
            return
        if report.batches and memory.backend.batch_pause_s > 0:
            time.sleep(memory.backend.batch_pause_s)
        batch = _Batch(pending)
        added, skipped = memory.backend.memories.restore(batch)
        report.added += added
        report.skipped_existing += skipped
        report.batches += 1
        del pending[: batch.taken]
        done += batch.taken
        if progress is not None:
            progress(done, total)


class _Batch:
    """The memories one transaction applies: from the front of `pending`, until BATCH_SECONDS have passed.
    Iterable again from the start, for a backend that retries a whole transaction (a busy or deadlocked one)."""

    def __init__(self, pending: list[tuple[Memory, tuple[str, Vector] | None]]):
        self.pending = pending
        self.taken = 0

    def __iter__(self) -> Iterator[tuple[Memory, tuple[str, Vector] | None]]:
        deadline = time.monotonic() + BATCH_SECONDS
        self.taken = 0
        for item in self.pending:
            if self.taken and time.monotonic() > deadline:
                return
            self.taken += 1
            yield item


def _shown_reason(where: str, reason: str) -> str:
    return reason if where.startswith("line") else f"{where}: {reason}"


def _line_number(where: str) -> int:
    """'line 12' -> 12; 'entities[3]' (a single-JSON file) -> 4, its position counted from 1."""
    digits = "".join(ch for ch in where if ch.isdigit())
    return (int(digits) + (0 if where.startswith("line") else 1)) if digits else 0
