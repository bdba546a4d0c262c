"""Export and import: our own JSONL round trip, the official memory server's files, bad lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.exchange import FORMAT, ImportRefused, export_jsonl, export_time, import_jsonl
from agentcache_mcp.memory.model import MemoryFilter
from agentcache_mcp.memory.service import MemoryService

from conftest import HashEmbedder

FIXTURES = Path(__file__).parent / "fixtures"
QUERIES = ["garden tomatoes", "train to Lyon", "quarterly budget", "dentist appointment", "birthday cake", "server"]
TOPICS = [
    "planted tomatoes and basil in the garden",
    "booked the train to Lyon for the conference",
    "the quarterly budget review is on Thursday",
    "dentist appointment moved to the 14th",
    "ordered a chocolate birthday cake for Sam",
    "the staging server needs a new certificate",
    "read a novel about lighthouse keepers",
]


def populated(path: Path) -> MemoryService:
    memory = open_memory(Settings(db_path=path), embedder=HashEmbedder())
    for i in range(120):
        memory.remember(
            f"note {i}: {TOPICS[i % len(TOPICS)]}",
            namespace=["home", "work"][i % 2],
            tags=[f"t{i % 4}"],
            importance=(i % 10) / 10,
            ttl_days=None if i % 5 else 90,
            metadata={"n": i, "kind": "test"},
        )
    older, newer = memory.remember("wifi password is hunter2", namespace="home"), None
    newer = memory.remember("wifi password is now correct-horse", namespace="home", supersedes=[older.id])
    assert newer.id != older.id
    memory.embed_pending()
    for q in QUERIES:  # access stats to carry over
        memory.recall(q, namespace="home")
    memory.flush_accesses()
    return memory


def export_text(memory: MemoryService, **kwargs: object) -> str:
    out = io.StringIO()
    export_jsonl(memory, out, namespaces=kwargs.get("namespaces"), with_vectors=bool(kwargs.get("with_vectors")))  # type: ignore[arg-type]
    return out.getvalue()


def fields(memory: MemoryService) -> dict[str, dict[str, object]]:
    out = {}
    for m in memory.backend.memories.find(MemoryFilter(None)):
        out[m.id] = {
            k: getattr(m, k)
            for k in ("namespace", "text", "tags", "importance", "metadata", "access_count", "superseded_by")
        }
        # times are kept to the microsecond (the export writes ISO 8601 with microseconds)
        out[m.id] |= {
            k: export_time(getattr(m, k)) for k in ("created_at", "updated_at", "last_accessed_at", "expires_at")
        }
    return out


@pytest.mark.parametrize("with_vectors", [True, False])
def test_export_then_import_gives_the_same_store_and_the_same_rankings(tmp_path: Path, with_vectors: bool) -> None:
    original = populated(tmp_path / "a.db")
    dump = tmp_path / "dump.jsonl"
    dump.write_text(export_text(original, with_vectors=with_vectors))
    header = json.loads(dump.read_text().splitlines()[0])
    assert header["format"] == FORMAT and header["embedding_model"] == "test-hash-embedder"

    copy = open_memory(Settings(db_path=tmp_path / "b.db"), embedder=HashEmbedder())
    try:
        report = import_jsonl(copy, dump, namespace=None, dry_run=False, skip_invalid=False)
        assert report.applied and report.added == 122 and report.skipped_existing == 0
        assert copy.backend.memories.counts_by_namespace() == original.backend.memories.counts_by_namespace()
        assert fields(copy) == fields(original)
        if with_vectors:
            assert copy.pending_embeddings() == 0  # the vectors came with the file: nothing to re-embed
        else:
            assert copy.pending_embeddings() == 122
            copy.embed_pending()
        same_top5 = 0
        for q in QUERIES:
            for ns in ("home", "work"):
                a = [h.id for h in original.recall(q, namespace=ns, limit=5, touch=False)]
                b = [h.id for h in copy.recall(q, namespace=ns, limit=5, touch=False)]
                assert a[:1] == b[:1], q
                same_top5 += len(set(a) & set(b))
        assert same_top5 >= 0.8 * 5 * len(QUERIES) * 2

        again = import_jsonl(copy, dump, namespace=None, dry_run=False, skip_invalid=False)
        assert again.added == 0 and again.skipped_existing == 122
        assert sum(copy.backend.memories.counts_by_namespace().values()) == 122
    finally:
        original.close()
        copy.close()


def test_export_can_be_limited_to_namespaces(tmp_path: Path) -> None:
    memory = populated(tmp_path / "a.db")
    try:
        lines = export_text(memory, namespaces=["work"]).splitlines()
        assert json.loads(lines[0])["namespaces"] == ["work"]
        assert len(lines) == 61 and {json.loads(line)["namespace"] for line in lines[1:]} == {"work"}
    finally:
        memory.close()


def test_a_dry_run_counts_and_changes_nothing(tmp_path: Path) -> None:
    original = populated(tmp_path / "a.db")
    dump = tmp_path / "dump.jsonl"
    dump.write_text(export_text(original))
    original.close()
    copy = open_memory(Settings(db_path=tmp_path / "b.db"), embedder=HashEmbedder())
    try:
        report = import_jsonl(copy, dump, namespace=None, dry_run=True, skip_invalid=False)
        assert not report.applied and report.added == 122
        assert copy.backend.memories.counts_by_namespace() == {}
    finally:
        copy.close()


def test_a_bad_line_in_the_middle_applies_nothing_and_names_the_line(tmp_path: Path) -> None:
    original = populated(tmp_path / "a.db")
    lines = export_text(original).splitlines()
    original.close()
    bad = json.loads(lines[50])
    bad["importance"] = 7
    lines[50] = json.dumps(bad)
    lines[80] = "{not json"
    dump = tmp_path / "dump.jsonl"
    dump.write_text("\n".join(lines) + "\n")
    copy = open_memory(Settings(db_path=tmp_path / "b.db"), embedder=HashEmbedder())
    try:
        with pytest.raises(
            ImportRefused,
            match=r"2 invalid line\(s\), nothing was imported \(line 51: importance .*; line 81: not JSON",
        ):
            import_jsonl(copy, dump, namespace=None, dry_run=False, skip_invalid=False)
        assert copy.backend.memories.counts_by_namespace() == {}
        report = import_jsonl(copy, dump, namespace=None, dry_run=False, skip_invalid=True)
        assert report.added == 120 and [n for n, _ in report.invalid] == [51, 81]
    finally:
        copy.close()


@pytest.mark.parametrize("name", ["official-memory.jsonl", "official-memory-legacy.json"])
def test_the_official_memory_servers_file_imports_as_observations_and_relations(tmp_path: Path, name: str) -> None:
    memory = open_memory(Settings(db_path=tmp_path / "m.db", namespace="me"), embedder=HashEmbedder())
    try:
        report = import_jsonl(memory, FIXTURES / name, namespace=None, dry_run=False, skip_invalid=False)
        assert report.format.startswith("official-memory") and report.added == 9  # 7 observations, 2 relations
        texts = {m.text: m.tags for m in memory.backend.memories.find(MemoryFilter("me"))}
        assert texts["Alice Moreau (person): Has a cat named Pixel"] == ["person", "Alice Moreau"]
        assert texts["Alice Moreau leads Kestrel"] == ["relation", "Alice Moreau", "Kestrel"]
        assert import_jsonl(memory, FIXTURES / name, namespace=None, dry_run=False, skip_invalid=False).added == 0
    finally:
        memory.close()


@pytest.mark.model
def test_a_paraphrase_finds_the_imported_observation_with_the_real_model(tmp_path: Path) -> None:
    memory = open_memory(Settings(db_path=tmp_path / "m.db"))
    try:
        import_jsonl(memory, FIXTURES / "official-memory.jsonl", namespace="kg", dry_run=False, skip_invalid=False)
        memory.embedder.load()
        memory.embed_pending()
        outcome = memory.recall_outcome("What is the name of Alice's pet?", namespace="kg", limit=3)
        assert outcome.retrieval == "hybrid"
        assert outcome.hits[0].text == "Alice Moreau (person): Has a cat named Pixel"
    finally:
        memory.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty"), ("hello\n", "neither"), ('{"format": "agentcache-export", "version": 9}\n', "version 9")],
)
def test_unknown_files_are_refused_clearly(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    memory = open_memory(Settings(db_path=tmp_path / "m.db"), embedder=HashEmbedder())
    try:
        with pytest.raises(ImportRefused, match=message):
            import_jsonl(memory, path, namespace=None, dry_run=False, skip_invalid=False)
    finally:
        memory.close()
