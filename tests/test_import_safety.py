"""An import never damages the store: every field of every line is checked against this store before anything
is applied, whatever the file holds (hostile values, another model's vectors, ids of other namespaces); the
file is read once; a large import is applied in batches that let other writers in, and resumes after a failure
without adding anything twice. On both backends where the store is involved."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import sqlean
from contract.harness import HARNESSES, Harness, PostgresHarness, SqliteHarness
from mcp import Client
from starlette.testclient import TestClient

from agentcache_mcp import app as app_module
from agentcache_mcp import cli, serving
from agentcache_mcp.config import DEFAULT_MODEL, ENV_VARIABLES, Settings
from agentcache_mcp.memory.exchange import (
    FORMAT,
    ImportInterrupted,
    ImportRefused,
    export_jsonl,
    import_jsonl,
)
from agentcache_mcp.memory.model import MemoryFilter, content_hash
from agentcache_mcp.memory.service import MemoryService
from agentcache_mcp.server import build_server
from agentcache_mcp.workers import App

from conftest import DIM, HashEmbedder

MODEL = HashEmbedder.model_id
HEADER = {"format": FORMAT, "version": 1, "schema": 1, "embedding_model": MODEL, "namespaces": "all"}
BASE = "http://127.0.0.1:8765"


@pytest.fixture(params=HARNESSES)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "postgres":
        yield PostgresHarness(request.getfixturevalue("postgres_server"), request.getfixturevalue("postgres_url"))
    else:
        yield SqliteHarness(tmp_path)


@pytest.fixture
def store(harness: Harness) -> Iterator[MemoryService]:
    memory = harness.open(auto_forget_enabled=False)
    yield memory
    memory.close()


def record(n: int, **fields: Any) -> dict[str, Any]:
    """A valid line of our format: memory number n (its id and text follow from n)."""
    return {
        "id": f"IMPORTED{n:06d}",
        "namespace": "imported",
        "text": f"imported memory number {n} about topic {n % 7}",
        "tags": ["imported"],
        "importance": 0.5,
        "metadata": {"n": n},
        "created_at": "2026-01-01T00:00:00.000000Z",
        "updated_at": "2026-01-01T00:00:00.000000Z",
        "last_accessed_at": None,
        "access_count": 0,
        "expires_at": None,
        "superseded_by": None,
    } | fields


class Raw(str):
    """Written into the line as it is, not as a JSON string."""


def dumps(value: dict[str, Any]) -> str:
    """JSON, with the Raw values among value's own written as they are."""
    text = json.dumps(value)
    for v in value.values():
        if isinstance(v, Raw):
            text = text.replace(json.dumps(v), v, 1)
    return text


def write_file(path: Path, lines: list[Any], header: dict[str, Any] | None = HEADER) -> Path:
    """Each line as given if a string (raw), else as JSON; the header first unless None."""
    rows = ([dumps(header)] if header is not None else []) + [
        line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8", errors="surrogatepass")
    return path


def vector(values: np.ndarray | list[float], model: str = MODEL, dim: int | None = None) -> dict[str, Any]:
    data = np.asarray(values, dtype="<f4")
    return {"model": model, "dim": dim or len(data), "float32_base64": base64.b64encode(data.tobytes()).decode()}


def unit(dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


def everything(memory: MemoryService) -> list[tuple[str, str, str]]:
    return sorted((m.id, m.namespace, m.text) for m in memory.backend.memories.find(MemoryFilter(None)))


def run_import(memory: MemoryService, path: Path, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"namespace": None, "dry_run": False, "skip_invalid": False} | kwargs
    return import_jsonl(memory, path, **options)


# --- times every read can show ---------------------------------------------------------------------------

OUT_OF_RANGE_TIMES: list[Any] = [
    "9999-12-31T23:59:59.999999Z",  # rounds into year 10000 as a float
    "9999-12-31T23:59:59-05:00",  # year 10000 in UTC
    "0001-01-01T00:00:00+05:00",  # year 0 in UTC
    -1e12,
    1e300,
    253402300800,  # 10000-01-01
    Raw("1e400"),  # beyond a float
    Raw("1" + "0" * 5000),  # an integer over Python's 4300-digit limit
    Raw("NaN"),
    Raw("-Infinity"),
]
EDGE_TIMES: list[Any] = ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", -1, 0, "1969-12-31T23:59:59.5Z"]
TIME_FIELDS = ["created_at", "updated_at", "expires_at", "last_accessed_at"]


def time_line(n: int, name: str, value: Any) -> str:
    """A line of memory n with `value` in field `name`."""
    raw = value if isinstance(value, Raw) else json.dumps(value)
    return json.dumps(record(n, **{name: "__VALUE__"})).replace('"__VALUE__"', raw)


def test_an_import_refuses_times_no_read_can_show_naming_line_and_field(store: MemoryService, tmp_path: Path) -> None:
    store.remember("already here", namespace="imported")
    before = everything(store)
    lines, expected = [], {}
    n = 0
    for name in TIME_FIELDS:
        for value in OUT_OF_RANGE_TIMES:
            n += 1
            lines.append(time_line(n, name, value))
            expected[n + 1] = name  # the header is line 1
    path = write_file(tmp_path / "times.jsonl", lines)
    with pytest.raises(ImportRefused) as refused:
        run_import(store, path)
    message = str(refused.value)
    assert f"{len(lines)} invalid line(s), nothing was imported" in message
    reported = dict(re.findall(r"line (\d+): ([^;]*)", message))
    for number, name in list(expected.items())[:20]:  # the first 20 are listed
        reason = reported[str(number)]
        assert name in reason, (number, reason)
        if "JSON" not in reason:
            assert "out of range" in reason or "finite" in reason, reason
    assert "Traceback" not in message and "\n" not in message
    assert everything(store) == before


def test_whatever_times_a_file_holds_what_is_imported_stays_readable_everywhere(harness: Harness, tmp_path: Path) -> None:
    """Export, recall, the CLI's list, recall and show, the namespace and memory resources and every UI page,
    after an import (with --skip-invalid) of a file holding every edge and out-of-range time in every time
    field."""
    if isinstance(harness, SqliteHarness):
        db, settings = str(harness.path), Settings(db_path=harness.path, auto_forget_enabled=False, namespace="imported")
    else:
        assert isinstance(harness, PostgresHarness)
        db, settings = harness.url, Settings(database_url=harness.url, auto_forget_enabled=False, namespace="imported")
    memory = app_module.open_memory(settings, embedder=HashEmbedder())
    lines, n = [], 0
    for name in TIME_FIELDS:
        for value in [*EDGE_TIMES, *OUT_OF_RANGE_TIMES]:
            n += 1
            lines.append(time_line(n, name, value))
    path = write_file(tmp_path / "edges.jsonl", lines)
    try:
        report = run_import(memory, path, skip_invalid=True)
        assert report.added == len(TIME_FIELDS) * len(EDGE_TIMES)  # the edges in, the rest refused
        memory.embed_pending()
        ids = [m.id for m in memory.backend.memories.find(MemoryFilter("imported"))]

        out = io.StringIO()
        assert export_jsonl(memory, out, namespaces=None, with_vectors=True) == len(ids)
        assert memory.recall("imported memory topic", namespace="imported", limit=20)
        stats = memory.stats()
        assert stats

        async def resources() -> None:
            async with Client(build_server(settings, app=App(settings, memory))) as client:
                page = json.loads((await client.read_resource("agentcache://namespace/imported")).contents[0].text)  # type: ignore[union-attr]
                assert len(page["memories"]) == len(ids)
                for memory_id in ids:
                    one = await client.read_resource(f"agentcache://memory/{memory_id}")
                    assert json.loads(one.contents[0].text)["id"] == memory_id  # type: ignore[union-attr]
                found = await client.call_tool("recall", {"query": "imported memory", "limit": 20})
                assert not found.is_error, found.content

        anyio.run(resources)

        ui_app = App(settings, memory)
        asgi = serving.http_server(build_server(settings, app=ui_app), settings, "streamable-http", app=ui_app).config.app
        with TestClient(asgi, base_url=BASE) as client:
            pages = ["/ui/", "/ui/ns/imported", "/ui/ns/imported?q=imported+memory", "/ui/stats", "/ui/chart?days=3660"]
            pages += [f"/ui/memory/{memory_id}" for memory_id in ids]
            for page in pages:
                assert client.get(page).status_code == 200, page
    finally:
        memory.close()
    for argv in (["list", "--namespace", "imported", "--limit", "100"], ["recall", "--namespace", "imported", "imported"]):
        assert cli_run(["--db", db, *argv]) == (0, ""), argv
    for memory_id in ids:
        assert cli_run(["--db", db, "show", memory_id]) == (0, ""), memory_id


def cli_run(argv: list[str]) -> tuple[int, str]:
    """cli.main in this process with the fake model; (exit code, stderr)."""
    captured = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV_VARIABLES:
            patch.delenv(name, raising=False)
        patch.setattr(app_module, "SentenceTransformerEmbedder", lambda model=DEFAULT_MODEL, **_: HashEmbedder())
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    return code, captured.getvalue()


# --- hostile files ---------------------------------------------------------------------------------------


def hostile_files(tmp_path: Path) -> list[tuple[str, Path, str]]:
    """(what, file, what the one-line refusal must say) for files an attacker or a broken tool could write."""
    files: list[tuple[str, Path, str]] = []

    def add(what: str, lines: list[Any], expect: str, header: dict[str, Any] | None = HEADER) -> None:
        files.append((what, write_file(tmp_path / f"hostile{len(files)}.jsonl", lines, header), expect))

    deep = '{"type":"entity","name":"x","entityType":"y","observations":' + "[" * 100_000 + "]" * 100_000 + "}"
    add("deeply nested JSON (official)", [deep], "line 1: ", header=None)
    add("deeply nested JSON (ours)", [json.dumps(record(1)).replace('{"n": 1}', "[" * 50_000 + "]" * 50_000)], "line 2: ")
    add("a huge integer in access_count", [json.dumps(record(1)).replace('"access_count": 0', '"access_count": ' + "9" * 5000)], "line 2: access_count")
    add("a huge integer in metadata", [json.dumps(record(1)).replace('{"n": 1}', '{"n": ' + "9" * 5000 + "}")], "line 2: metadata.n")
    add("a float beyond range in importance", [json.dumps(record(1)).replace('"importance": 0.5', '"importance": 1e999')], "line 2: importance")
    add("NaN importance", [json.dumps(record(1)).replace('"importance": 0.5', '"importance": NaN')], "line 2: importance: NaN")
    add("a 64-bit access_count", [record(1, access_count=2**63 - 1)], "line 2: access_count")
    add("NUL in an id", [record(1, id="ABC\u0000DEF")], "line 2: id")
    add("a lone surrogate in an id", [json.dumps(record(1)).replace("IMPORTED000001", "IMPORTED\\ud800")], "line 2: id")
    add("an escape sequence in an id", [record(1, id="ABC\u001b[31mDEF")], "line 2: id")
    # a browser resolves the UI's /ui/memory/.. (and /ui/memory/%2e%2e) to /ui/: that memory's page, its edit
    # and forget forms could never be reached
    add("an id that is a dot segment", [record(1, id="..")], "line 2: id")
    add("an id that is one dot", [record(1, id=".")], "line 2: id")
    add("a lone surrogate in superseded_by", [json.dumps(record(1)).replace('"superseded_by": null', '"superseded_by": "\\udfff"')], "line 2: superseded_by")
    add("a raw NUL byte", [json.dumps(record(1)).replace("memory number", "memory\x00number")], "line 2: not JSON")
    add("an object for tags", [record(1, tags={"a": 1})], "line 2: tags must be a list")
    add("33 tags", [record(1, tags=[f"t{i}" for i in range(33)])], "line 2: at most 32 tags")
    add("metadata over the key limit", [record(1, metadata={f"k{i}": i for i in range(65)})], "line 2: metadata")
    add("nested metadata", [record(1, metadata={"a": {"b": 1}})], "line 2: metadata value for 'a'")
    add("an unknown field", [record(1, evil=1)], "line 2: unknown field")
    add("a list for a line", [[1, 2, 3]], "line 2: expected a JSON object")
    add("a number for text", [record(1, text=5)], "line 2: text")
    add("an int for created_at beyond 64 bits", [json.dumps(record(1)).replace('"created_at": "2026-01-01T00:00:00.000000Z"', '"created_at": ' + "1" * 30)], "line 2: created_at")
    add("a text over the size limit", [record(1, text="x" * 70_000)], "line 2: text is")
    add("an official entity with numbers for observations", [{"type": "entity", "name": "A", "entityType": "p", "observations": [1, {}]}], "line 1: observations[0]", header=None)
    add("an official entity with a number for a name", [{"type": "entity", "name": 5, "entityType": "p", "observations": ["o"]}], "line 1: name", header=None)
    add("an official entity with null entityType", [{"type": "entity", "name": "A", "entityType": None, "observations": ["o"]}], "line 1: entityType", header=None)
    add("an official entity with a string for observations", [{"type": "entity", "name": "A", "entityType": "p", "observations": "o"}], "line 1: observations", header=None)
    add("an official relation with a list for from", [{"type": "relation", "from": ["A"], "to": "B", "relationType": "r"}], "line 1: from", header=None)
    add("an official observation with NUL", [{"type": "entity", "name": "A", "entityType": "p", "observations": ["a\u0000b"]}], "line 1: observations[0]", header=None)
    add("an official name with a lone surrogate", ['{"type":"entity","name":"A\\ud800","entityType":"p","observations":["o"]}'], "line 1: name", header=None)
    add("an official relation type as a number", ['{"type":"relation","from":"A","to":"B","relationType":1e999}'], "line 1: relationType", header=None)
    add("a line over 8 MiB", [record(1, text="x" * (9 * 1024 * 1024))], "line 2 is longer than")
    add("a header with a huge version", [record(1)], "version", header={"format": FORMAT, "version": Raw("9" * 5000)})
    legacy = tmp_path / "legacy-bad.json"
    legacy.write_text(json.dumps({"entities": [5, {"name": "A", "entityType": "p", "observations": [None]}]}))
    files.append(("a legacy file with a number for an entity", legacy, "line 1: entities[0]: expected a JSON object"))
    legacy_list = tmp_path / "legacy-list.json"
    legacy_list.write_text(json.dumps({"entities": "everything"}))
    files.append(("a legacy file with a string for entities", legacy_list, "entities must be a list"))
    legacy_deep = tmp_path / "legacy-deep.json"
    legacy_deep.write_text('{"entities": ' + "[" * 100_000 + "]" * 100_000 + "}")
    files.append(("a deeply nested legacy file", legacy_deep, "nested too deeply"))
    return files


def test_hostile_files_are_refused_in_one_line_naming_line_and_field_and_change_nothing(
    store: MemoryService, tmp_path: Path
) -> None:
    store.remember("already here", namespace="imported")
    before = everything(store)
    for what, path, expect in hostile_files(tmp_path):
        try:
            run_import(store, path)
        except ImportRefused as exc:
            message = str(exc)
        except Exception as exc:  # a traceback for the user
            raise AssertionError(f"{what}: {type(exc).__name__}: {str(exc)[:200]}") from None
        else:
            raise AssertionError(f"{what}: imported")
        assert expect in message, (what, message[:300])
        assert "\n" not in message and len(message) < 2000, what
        assert everything(store) == before, what


def test_the_command_line_refuses_hostile_files_in_one_line_with_exit_1(tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    for what, path, expect in hostile_files(tmp_path):
        code, err = cli_run(["--db", str(db), "import", str(path)])
        lines = err.splitlines()
        assert code == 1 and len(lines) == 1 and "Traceback" not in err, (what, err[:500])
        assert lines[0].startswith("agentcache-mcp: import refused: ") and expect in lines[0], (what, lines[0][:300])


def test_a_byte_order_mark_and_crlf_line_ends_are_read(store: MemoryService, tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    rows = [json.dumps(HEADER), json.dumps(record(1)), "", json.dumps(record(2))]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    assert run_import(store, path).added == 2
    official = tmp_path / "memory.jsonl"
    official.write_bytes(b"\xef\xbb\xbf" + b'{"type":"entity","name":"A","entityType":"p","observations":["o"]}\r\n')
    assert run_import(store, official, namespace="kg").added == 1


# --- vectors ---------------------------------------------------------------------------------------------


def test_a_vector_of_another_model_is_dropped_with_a_note_and_a_damaged_one_refuses_its_line(
    store: MemoryService, tmp_path: Path
) -> None:
    nan = unit()
    nan[3] = np.nan
    bad = {
        "another dimension of this store's model": (vector(unit(DIM * 2)), "vector.dim is 128"),
        "NaN": (vector(nan), "not finite"),
        "infinity": (vector(np.full(DIM, np.inf)), "not finite"),
        "not base64": ({"model": MODEL, "dim": DIM, "float32_base64": "!!!!"}, "not base64"),
        "dim and data disagree": (vector(unit(), dim=DIM + 1), "vector.dim says 65"),
        "a vector 1000 times too long": (vector(unit() * 1000), "unit vector"),
        "a zero vector": (vector(np.zeros(DIM)), "unit vector"),
        "values whose squares overflow a float32": (vector(np.full(DIM, 1e30)), "unit vector"),
        "a number for the base64": ({"model": MODEL, "dim": DIM, "float32_base64": 5}, "base64"),
        "a damaged vector of another model": (vector(nan, model="other-model"), "not finite"),
    }
    before = everything(store)
    for what, (value, expect) in bad.items():
        path = write_file(tmp_path / "v.jsonl", [record(1, vector=value)])
        with pytest.raises(ImportRefused, match=re.escape(expect)):
            run_import(store, path)
        assert everything(store) == before, what

    path = write_file(
        tmp_path / "models.jsonl",
        [
            record(1, vector=vector(unit(384, 1), model="all-MiniLM-L6-v2@elsewhere")),
            record(2, vector=vector(unit(DIM, 2))),
        ],
    )
    report = run_import(store, path)
    assert (report.added, report.dropped_vectors, report.dropped_models) == (2, 1, ["all-MiniLM-L6-v2@elsewhere"])
    assert store.pending_embeddings() == 1  # the memory whose vector was dropped waits for one of this model
    [kept] = store.backend.memories.get(None, ["IMPORTED000002"])
    stored = store.backend.embeddings.vectors_of(MODEL, [kept.key])[kept.key]
    assert np.allclose(stored, unit(DIM, 2), atol=1e-6)
    store.embed_pending()
    assert store.pending_embeddings() == 0
    assert store.recall("imported memory number 1", namespace="imported", limit=2)[0].id == "IMPORTED000001"


# --- ids and supersession --------------------------------------------------------------------------------


def test_ids_and_supersession_never_reach_into_another_namespace(store: MemoryService, tmp_path: Path) -> None:
    theirs = store.remember("their private fact", namespace="other")
    # A memory naming an id no memory has, as an import before these checks could store: not superseded yet.
    [dangling] = store.backend.memories.find(MemoryFilter("other"))
    dangling.id, dangling.text, dangling.content_hash = "DANGLING1", "their older fact", content_hash("their older fact")
    dangling.superseded_by = "GHOST0000001"
    store.backend.memories.restore([(dangling, None)])
    before = everything(store)
    cases = {
        "an id that is another namespace's memory": ([record(1, id=theirs.id)], "line 2: id", "namespace 'other'"),
        "an id another namespace's memory names as superseding it": (
            [record(1, id="GHOST0000001")],
            "line 2: id 'GHOST0000001' is what a memory of namespace 'other' names as superseding it",
            "",
        ),
        "an id twice with different memories": (
            [record(1), record(2, id="IMPORTED000001")],
            "line 3: id 'IMPORTED000001' is also the id of another memory, on line 2",
            "",
        ),
        "superseded by a memory of another namespace in the store": (
            [record(1, superseded_by=theirs.id)],
            "line 2: superseded_by",
            "namespace 'other'",
        ),
        "superseded by a memory of another namespace in the file": (
            [record(1, superseded_by="IMPORTED000002"), record(2, namespace="elsewhere")],
            "line 2: superseded_by 'IMPORTED000002' is a memory of namespace 'elsewhere'",
            "",
        ),
    }
    for what, (lines, expect, also) in cases.items():
        path = write_file(tmp_path / "ids.jsonl", lines)
        with pytest.raises(ImportRefused) as refused:
            run_import(store, path)
        assert expect in str(refused.value) and also in str(refused.value), (what, str(refused.value))
        assert everything(store) == before, what
    assert [h.id for h in store.recall("their private fact", namespace="other", limit=1)] == [theirs.id]
    assert [h.id for h in store.recall("their older fact", namespace="other", limit=1)] == ["DANGLING1"]

    # A correction within the file is kept; one naming no memory anywhere is stored as not superseded (what a
    # dangling pointer means to every read), so no memory written later can take that id and hide it.
    path = write_file(
        tmp_path / "ok.jsonl",
        [
            record(1, superseded_by="IMPORTED000002"),
            record(2),
            record(3, superseded_by="NOWHERE0000000000000000000"),
            record(2),  # the same memory twice: skipped
        ],
    )
    report = run_import(store, path)
    assert (report.added, report.skipped_existing) == (3, 1)
    got = {m.id: m.superseded_by for m in store.backend.memories.find(MemoryFilter("imported"))}
    assert got == {"IMPORTED000001": "IMPORTED000002", "IMPORTED000002": None, "IMPORTED000003": None}


def test_a_file_whose_memories_supersede_each_other_in_a_cycle_is_refused(store: MemoryService, tmp_path: Path) -> None:
    """No export holds a cycle (a memory is only superseded by a live one): a file that does would hide every
    memory of it from recall, list and the UI, with nothing live left to stand for them."""
    before = everything(store)
    path = write_file(
        tmp_path / "cycle.jsonl",
        [record(1, superseded_by="IMPORTED000002"), record(2, superseded_by="IMPORTED000003"),
         record(3, superseded_by="IMPORTED000001"), record(4, superseded_by="IMPORTED000004"), record(5)],
    )  # fmt: skip
    with pytest.raises(ImportRefused) as refused:
        run_import(store, path)
    message = str(refused.value)
    assert "3 invalid line(s)" in message and all(f"line {n}: superseded_by" in message for n in (2, 3, 4)), message
    assert "cycle" in message
    assert everything(store) == before
    report = run_import(store, path, skip_invalid=True)
    assert (report.added, [n for n, _ in report.invalid]) == (2, [2, 3, 4])
    assert {h.id for h in store.recall("imported memory number", namespace="imported", limit=10)} == {
        "IMPORTED000004", "IMPORTED000005"
    }  # fmt: skip


def test_a_memory_superseded_by_one_whose_text_is_already_stored_stays_superseded(
    store: MemoryService, tmp_path: Path
) -> None:
    """Merging another store's export: its correction is skipped (this store has its text, under another id),
    and the memory it corrected must stay superseded, not come back to recall through a pointer to an id no
    memory has."""
    here = store.remember("The office is at 12 Rue Cler", namespace="imported")
    path = write_file(
        tmp_path / "merge.jsonl",
        [
            record(1, text="The office is at 3 Rue Mouffetard", superseded_by="IMPORTED000002"),
            record(2, text="The office is at 12 Rue Cler"),  # skipped: stored already, as `here`
            record(3, text="The lab is at 5 Quai Branly", superseded_by="IMPORTED000004"),
            record(4, text="The lab is at 9 Quai Branly"),
            record(5, text="The lab is at 9 Quai Branly"),  # the same text again under another id: skipped
            record(6, text="The lab is at 7 Quai Branly", superseded_by="IMPORTED000005"),
        ],
    )
    report = run_import(store, path)
    assert (report.added, report.skipped_existing) == (4, 2)
    got = {m.id: m.superseded_by for m in store.backend.memories.find(MemoryFilter("imported"))}
    assert got["IMPORTED000001"] == here.id
    assert got["IMPORTED000003"] == "IMPORTED000004" and got["IMPORTED000006"] == "IMPORTED000004"
    found = {h.text for h in store.recall("where is the office and the lab", namespace="imported", limit=10)}
    assert found == {"The office is at 12 Rue Cler", "The lab is at 9 Quai Branly"}

    # and a cycle through such a record is still a cycle: 7 -> 8 -> 9, 9 standing for 7 (the same text)
    path = write_file(
        tmp_path / "loop.jsonl",
        [
            record(7, superseded_by="IMPORTED000008"),
            record(8, superseded_by="IMPORTED000009"),
            record(9, text=record(7)["text"]),
            record(10, superseded_by="IMPORTED000011"),
            record(11, text=record(10)["text"]),  # 10 would be superseded by itself
        ],
    )
    with pytest.raises(ImportRefused) as refused:
        run_import(store, path)
    assert "3 invalid line(s)" in str(refused.value) and "cycle" in str(refused.value), str(refused.value)


def test_a_record_skipped_for_the_text_of_a_refused_line_is_imported_and_keeps_what_names_it(
    store: MemoryService, tmp_path: Path
) -> None:
    theirs = store.remember("their private fact", namespace="other")
    path = write_file(
        tmp_path / "refused-first.jsonl",
        [
            record(1, text="the same text", superseded_by=theirs.id),  # refused: another namespace's memory
            record(2, text="the same text"),
            record(3, superseded_by="IMPORTED000002"),
        ],
    )
    run_import(store, path, skip_invalid=True)
    got = {m.id: m.superseded_by for m in store.backend.memories.find(MemoryFilter("imported"))}
    assert got == {"IMPORTED000002": None, "IMPORTED000003": "IMPORTED000002"}


# --- read once -------------------------------------------------------------------------------------------


def test_a_file_changed_during_the_import_is_applied_as_it_was_checked(store: MemoryService, tmp_path: Path) -> None:
    path = write_file(tmp_path / "big.jsonl", [record(n) for n in range(1200)])
    checked = path.read_bytes()
    evil = json.dumps(record(9999, created_at=1e300, text="an unchecked line"))
    calls = []

    def tamper(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 1:  # after the check, between two batches: append, and rewrite a checked line in place
            with path.open("r+b") as f:
                f.seek(len(checked))
                f.write(evil.encode() + b"\n")
                f.seek(checked.index(b"imported memory number 1100 "))
                f.write(b"TAMPERED")

    report = run_import(store, path, progress=tamper)
    assert len(calls) > 1 and report.added == 1200
    texts = {text for _, _, text in everything(store)}
    assert "an unchecked line" not in texts and not any("TAMPERED" in t for t in texts)
    assert "imported memory number 1100 about topic 1" in texts
    out = io.StringIO()
    export_jsonl(store, out, namespaces=None, with_vectors=False)


# --- batches ---------------------------------------------------------------------------------------------


def test_an_import_that_fails_half_way_leaves_whole_batches_and_a_second_run_adds_nothing_twice(
    store: MemoryService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.remember("imported memory number 5 about topic 5", namespace="imported")  # already there: skipped
    path = write_file(tmp_path / "many.jsonl", [record(n) for n in range(1200)])
    real = store.backend.memories.restore
    committed: list[int] = []

    def failing(items: Any) -> tuple[int, int]:
        if len(committed) == 1:  # the second batch fails after writing some of its memories

            def some() -> Iterator[Any]:
                for i, item in enumerate(items):
                    if i == 20:
                        raise OSError("disk unplugged")
                    yield item

            return real(some())
        added, skipped = real(items)
        committed.append(added + skipped)
        return added, skipped

    monkeypatch.setattr(store.backend.memories, "restore", failing)
    with pytest.raises(ImportInterrupted, match="disk unplugged") as stopped:
        run_import(store, path)
    assert "Import the same file again to add the rest" in str(stopped.value)
    assert stopped.value.report.batches == 1
    applied = sum(committed)
    assert 0 < applied < 1200
    assert len(everything(store)) == 1 + applied - 1  # whole batches only (one of their memories was there)
    monkeypatch.setattr(store.backend.memories, "restore", real)

    again = run_import(store, path)
    assert (again.added, again.skipped_existing) == (1200 - applied, applied)
    assert len(everything(store)) == 1200
    assert len({m_id for m_id, _, _ in everything(store)}) == 1200
    assert run_import(store, path).added == 0


def test_between_batches_the_import_holds_no_write_lock(tmp_path: Path) -> None:
    """Another process can write while a large import runs: each batch is its own transaction, and the import
    lets go of SQLite's write lock between them."""
    db = tmp_path / "memory.db"
    memory = app_module.open_memory(Settings(db_path=db), embedder=HashEmbedder())
    path = write_file(tmp_path / "many.jsonl", [record(n) for n in range(1200)])
    other = sqlean.connect(str(db), timeout=0.5, isolation_level=None)
    written = []

    def write_from_another_connection(done: int, total: int) -> None:
        if done < total:
            other.execute("BEGIN IMMEDIATE")  # 'database is locked' if the import held the lock
            other.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"between-{done}", "x"))
            other.execute("COMMIT")
            written.append(done)

    try:
        report = run_import(memory, path, progress=write_from_another_connection)
        assert report.added == 1200 and report.batches >= 3 and len(written) >= 2
    finally:
        other.close()
        memory.close()


def test_a_remember_from_another_thread_is_not_held_up_by_a_large_import(store: MemoryService, tmp_path: Path) -> None:
    """Not a timing test: remembers into the same namespace complete while the import is being applied (in
    batches, letting go of the write lock between them), where one transaction would hold them all back."""
    path = write_file(tmp_path / "many.jsonl", [record(n) for n in range(3000)])
    applying, finished = threading.Event(), threading.Event()
    during: list[int] = []

    def remember_meanwhile() -> None:
        n = 0
        applying.wait(60)
        while not finished.is_set():
            store.remember(f"written meanwhile {n}", namespace="imported")
            if not finished.is_set():
                during.append(n)
            n += 1

    worker = threading.Thread(target=remember_meanwhile)
    worker.start()
    try:
        run_import(store, path, progress=lambda done, total: applying.set())
    finally:
        finished.set()
        applying.set()
        worker.join(60)
    assert len(during) >= 3
    assert len(everything(store)) >= 3000 + len(during)


def test_the_command_line_says_what_an_interrupted_import_left_and_a_second_run_completes_it(tmp_path: Path) -> None:
    from agentcache_mcp.backends.sqlite.repository import SqliteMemories

    db = str(tmp_path / "memory.db")
    path = write_file(tmp_path / "many.jsonl", [record(n) for n in range(1200)])
    real = SqliteMemories.restore
    calls: list[int] = []

    def failing(self: SqliteMemories, items: Any) -> tuple[int, int]:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, items)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SqliteMemories, "restore", failing)
        code, err = cli_run(["--db", db, "import", str(path)])
    assert code == 1 and len(err.splitlines()) == 1, err
    found = re.search(r"import interrupted: stopped after (\d+) memories were added \(in 1 whole batch\)", err)
    assert found and "No space left on device" in err and "Import the same file again" in err, err
    assert cli_run(["--db", db, "import", str(path)]) == (0, "")
    memory = app_module.open_memory(Settings(db_path=Path(db)), embedder=HashEmbedder())
    try:
        assert len(everything(memory)) == 1200
    finally:
        memory.close()


def test_ctrl_c_while_applying_says_what_was_added_and_that_a_second_run_completes_it(tmp_path: Path) -> None:
    """README: if applying stops half-way (Ctrl-C included), an error says how many memories were added."""
    from agentcache_mcp.backends.sqlite.repository import SqliteMemories

    db = str(tmp_path / "memory.db")
    path = write_file(tmp_path / "many.jsonl", [record(n) for n in range(1200)])
    real = SqliteMemories.restore
    calls: list[int] = []

    def interrupted(self: SqliteMemories, items: Any) -> tuple[int, int]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, items)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SqliteMemories, "restore", interrupted)
        code, err = cli_run(["--db", db, "import", str(path)])
    assert code == 130 and len(err.splitlines()) == 1, err
    found = re.search(r"import interrupted: stopped after (\d+) memories were added \(in 1 whole batch\)", err)
    assert found and "Import the same file again" in err and "): ." not in err, err
    assert cli_run(["--db", db, "import", str(path)]) == (0, "")


def test_a_refused_line_is_applied_neither_through_a_copy_of_it_nor_in_part(store: MemoryService, tmp_path: Path) -> None:
    theirs = store.remember("their private fact", namespace="other")
    hiding = record(1, superseded_by=theirs.id)
    path = write_file(tmp_path / "twice.jsonl", [hiding, hiding, record(2)])
    report = run_import(store, path, skip_invalid=True)
    assert [n for n, _ in report.invalid] == [2] and (report.added, report.skipped_existing) == (1, 1)
    assert {m.id: m.superseded_by for m in store.backend.memories.find(MemoryFilter("imported"))} == {
        "IMPORTED000002": None
    }

    entity = {"type": "entity", "name": "A", "entityType": "p", "observations": ["fits", "x" * 70_000]}
    official = write_file(tmp_path / "half.jsonl", [entity], header=None)
    planned = run_import(store, official, namespace="kg", skip_invalid=True, dry_run=True)
    done = run_import(store, official, namespace="kg", skip_invalid=True)
    assert (planned.added, done.added, [n for n, _ in done.invalid]) == (0, 0, [1])
    assert store.backend.memories.find(MemoryFilter("kg")) == []
