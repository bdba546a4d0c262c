"""A memory waiting for its vector ranks as if it had one, on every backend: just written (the embedding writer
is behind), just imported without vectors, or claimed by a process that died before it wrote the vector.

Before, the vector half of such a memory's fused score was 0, so memories that shared one word of the question
and had a vector outranked the one that shared them all.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from agentcache_mcp.memory.exchange import FORMAT, VERSION, import_jsonl
from agentcache_mcp.memory.model import iso, new_id
from agentcache_mcp.memory.service import MemoryService

from .harness import Harness, PostgresHarness

QUESTION = "cabin wifi password"
ANSWER = "cabin wifi password is hunter2, printed on the router"
PARTIAL_MATCHES = [  # one word of the question each, with a vector
    "the office wifi drops every afternoon",
    "my password manager is bitwarden now",
    "the cabin has a wood stove and no television",
    "wifi at the airport lounge was free",
    "reset the password for the team calendar",
]


def patient(memory: MemoryService) -> MemoryService:
    """Recalls wait for the model as long as it takes (how briefly they wait is tests/test_engine.py's)."""
    memory.limits = dataclasses.replace(memory.limits, recall_embed_wait_s=60.0)
    return memory


def remember_embedded(memory: MemoryService) -> None:
    """The partial matches and some unrelated memories, all with a vector; the writer then caught up."""
    for i, text in enumerate(PARTIAL_MATCHES):
        memory.remember(text)
        memory.remember(f"unrelated note {i} about gardening and tomatoes")
    memory.embed_pending()
    memory.mark_embeddings_caught_up()  # as the background writer does once nothing is pending


def ranking(memory: MemoryService) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in memory.recall(QUESTION, limit=5)]


def assert_same_ranking(waiting: list[tuple[str, float]], embedded: list[tuple[str, float]]) -> None:
    assert [i for i, _ in waiting] == [i for i, _ in embedded]
    # SQLite's in-memory copy of a stored vector is float16: cosines within 3e-4 of the float32 ones.
    assert [s for _, s in waiting] == pytest.approx([s for _, s in embedded], abs=2e-3)


def test_a_memory_without_a_vector_yet_ranks_as_it_will_once_embedded(service: MemoryService) -> None:
    remember_embedded(patient(service))
    answer = service.remember(ANSWER).id
    assert service.pending_embeddings() == 1
    waiting = ranking(service)
    assert service.pending_embeddings() == 1  # the recall wrote nothing
    service.embed_pending()
    assert service.pending_embeddings() == 0
    embedded = ranking(service)
    assert embedded[0][0] == answer
    assert_same_ranking(waiting, embedded)


def test_a_memory_claimed_by_a_process_that_died_ranks_as_if_embedded(harness: Harness) -> None:
    survivor = patient(harness.open(namespace="home", embedding_lease_s=600))
    dead = harness.open(namespace="home", embedding_lease_s=600)
    try:
        remember_embedded(survivor)
        answer = dead.remember(ANSWER).id
        [(key, _, _)] = dead.embedding_batch()  # claimed for 600 s; the process dies before writing the vector
        dead.close()
        if isinstance(harness, PostgresHarness):  # the lease holds: no other replica may embed it yet
            assert survivor.embedding_batch() == []
        assert survivor.pending_embeddings() == 1
        waiting = ranking(survivor)
        assert waiting[0][0] == answer
        survivor.store_embeddings([(key, ANSWER, _hash(survivor, answer))], survivor.embedder.embed([ANSWER]))
        assert survivor.pending_embeddings() == 0
        assert_same_ranking(waiting, ranking(survivor))
    finally:
        survivor.close()


def _hash(memory: MemoryService, memory_id: str) -> str:
    [found] = memory.backend.memories.get(None, [memory_id])
    return found.content_hash


def test_right_after_a_10k_import_without_vectors_the_imported_answer_ranks_first(
    service: MemoryService, tmp_path: Path
) -> None:
    remember_embedded(patient(service))
    rng = random.Random(19)
    words = ["turbine", "blade", "inspection", "report", "hangar", "shift", "crew", "torque", "valve", "pump"]
    words += ["garden", "kettle", "wifi", "router"]
    position = rng.randrange(10_000)
    path = tmp_path / "import.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"format": FORMAT, "version": VERSION}) + "\n")
        for i in range(10_000):
            # About 4 lines in 10 mention wifi: thousands of keyword candidates without a vector, far more than
            # a recall embeds itself.
            text = ANSWER if i == position else f"imported note {i}: " + " ".join(rng.sample(words, 6))
            at = iso(1.7e9 + i)
            record = {"id": new_id(), "namespace": "home", "text": text, "created_at": at, "updated_at": at}
            f.write(json.dumps(record) + "\n")
    report = import_jsonl(service, path, namespace=None, dry_run=False, skip_invalid=False)
    assert report.added == 10_000
    assert service.pending_embeddings() == 10_000
    assert service.recall(QUESTION, limit=3)[0].text == ANSWER
    assert service.pending_embeddings() == 10_000  # the recall wrote nothing
