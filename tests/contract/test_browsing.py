"""The promises behind the web UI's pages, run against every backend: a person's edit (tags, importance,
expiry) in one transaction within the rules, pages filtered by tag, memories per day, what a memory
supersedes, its neighbours in time, and the record of recent auto-forget sweeps."""

from __future__ import annotations

import time

import pytest

from agentcache_mcp.memory.fusion import FusionParams
from agentcache_mcp.memory.model import DAY, Memory, MemoryEdit, MemoryFilter
from agentcache_mcp.memory.service import RECENT_SWEEPS_KEPT, MemoryService
from agentcache_mcp.memory.validation import MAX_TAGS, InvalidInput

from .harness import Harness
from .test_promises import put

KEYWORD_ONLY = FusionParams(method="keyword")


def test_edit_sets_tags_importance_and_expiry_and_nothing_else(service: MemoryService) -> None:
    memory_id = service.remember("the boiler is serviced every October", tags=["house"], ttl_days=30).id
    [before] = service.backend.memories.get("home", [memory_id])
    edited = service.edit(memory_id, "home", tags=["home", "maintenance"], importance=0.9, never_expires=True)
    assert edited is not None
    assert (edited.tags, edited.importance, edited.expires_at) == (["home", "maintenance"], 0.9, None)
    [stored] = service.backend.memories.get("home", [memory_id])
    assert (stored.tags, stored.importance, stored.expires_at) == (["home", "maintenance"], 0.9, None)
    for field in ("key", "text", "content_hash", "created_at", "updated_at", "access_count", "superseded_by"):
        assert getattr(stored, field) == getattr(before, field), field


def test_edit_leaves_unnamed_fields_as_they_are_and_sets_expiry_from_now(service: MemoryService) -> None:
    memory_id = service.remember("the car's MOT is due in May", tags=["car"], importance=0.7).id
    started = time.time()
    edited = service.edit(memory_id, "home", ttl_days=2)
    assert edited is not None and edited.expires_at is not None
    assert edited.tags == ["car"] and edited.importance == 0.7
    assert started + 2 * DAY <= edited.expires_at <= time.time() + 2 * DAY
    lowered = service.edit(memory_id, "home", importance=0.1)
    assert lowered is not None and lowered.importance == 0.1  # a person may lower it; re-remembering never does
    assert lowered.expires_at == edited.expires_at


def test_edit_is_confined_to_its_namespace(service: MemoryService) -> None:
    memory_id = service.remember("a work note about the quarterly report", namespace="work").id
    assert service.edit(memory_id, "home", importance=1.0) is None
    assert service.edit("01JH3X5ZQ8W5V1R7Y0K2M4N6P8", "work", importance=1.0) is None
    [stored] = service.backend.memories.get("work", [memory_id])
    assert stored.importance == 0.5


@pytest.mark.parametrize(
    "edit",
    [
        {"importance": 1.5},
        {"importance": float("nan")},
        {"tags": ["x" * 65]},
        {"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]},
        {"tags": [""]},
        {"ttl_days": 0},
        {"ttl_days": -1},
        {"ttl_days": 3, "never_expires": True},
    ],
)
def test_edit_refuses_what_remember_refuses_and_writes_nothing(service: MemoryService, edit: dict) -> None:
    memory_id = service.remember("the spare key is under the blue pot", tags=["keys"]).id
    with pytest.raises(InvalidInput):
        service.edit(memory_id, "home", **edit)
    [stored] = service.backend.memories.get("home", [memory_id])
    assert (stored.tags, stored.importance, stored.expires_at) == (["keys"], 0.5, None)


def test_a_change_that_raises_writes_nothing(service: MemoryService) -> None:
    memory_id = service.remember("the wifi password is on the fridge").id

    def refuse(current: Memory) -> MemoryEdit:
        raise InvalidInput("no")

    with pytest.raises(InvalidInput):
        service.backend.memories.edit("home", memory_id, refuse)
    [stored] = service.backend.memories.get("home", [memory_id])
    assert stored.importance == 0.5 and stored.tags == []


def test_after_an_edit_recall_filters_by_the_new_tags_and_the_indexes_stay_sound(service: MemoryService) -> None:
    memory_id = service.remember("the plumber's number is in the green notebook", tags=["old"]).id
    service.embed_pending()
    service.edit(memory_id, "home", tags=["contacts"])
    assert [h.id for h in service.recall("plumber number", tags=["contacts"], fusion=KEYWORD_ONLY)] == [memory_id]
    assert service.recall("plumber number", tags=["old"], fusion=KEYWORD_ONLY) == []
    assert [h.id for h in service.recall("plumber number")] == [memory_id]  # hybrid: the vector is kept
    assert service.backend.keywords.check()


def test_an_edit_that_expires_a_memory_hides_it_from_recall(service: MemoryService) -> None:
    memory_id = service.remember("the gate code is 4417").id
    service.edit(memory_id, "home", ttl_days=1)
    assert [h.id for h in service.recall("gate code", fusion=KEYWORD_ONLY)] == [memory_id]
    later = time.time() + 2 * DAY
    assert service.backend.memories.find(MemoryFilter(namespace="home", live_at=later)) == []
    assert service.auto_forget(now=later).expired == [memory_id]


def test_recent_pages_by_tag_newest_first(service: MemoryService) -> None:
    ids = [service.remember(f"note {i}", tags=["even"] if i % 2 == 0 else ["odd"]).id for i in range(7)]
    service.remember("a tagged note elsewhere", namespace="work", tags=["even"])
    page = service.recent("home", limit=2, tags=["even"])
    assert [m.id for m in page] == [ids[6], ids[4]]
    rest = service.recent("home", limit=10, before=page[-1].id, tags=["even"])
    assert [m.id for m in rest] == [ids[2], ids[0]]
    assert [m.id for m in service.recent("home", limit=10, tags=["even", "odd"])] == []
    assert len(service.recent("home", limit=10)) == 7
    # Paging back: the page just above a key, newest first, same tag filter, same namespace.
    key = {m.id: m.key for m in service.recent("home", limit=10)}
    back = service.recent("home", limit=2, tags=["even"], after_key=key[ids[0]])
    assert [m.id for m in back] == [ids[4], ids[2]]
    assert [m.id for m in service.recent("home", limit=10, tags=["even"], after_key=key[ids[2]])] == [ids[6], ids[4]]
    assert service.recent("home", limit=10, after_key=key[ids[6]]) == []  # nothing newer; "work" is not looked at
    with pytest.raises(InvalidInput, match="one of before, before_key and after_key"):
        service.recent("home", limit=2, before=ids[3], after_key=key[ids[0]])
    with pytest.raises(InvalidInput, match="after_key must be a whole number"):
        service.recent("home", limit=2, after_key="3")  # type: ignore[arg-type]


def test_created_per_day_counts_each_namespace_by_utc_day(service: MemoryService) -> None:
    day = 20_000 * DAY  # 2024-10-04 00:00 UTC
    put(service, "home", "first of the day", created_at=day + 60)
    put(service, "home", "last of the day", created_at=day + DAY - 1)
    put(service, "home", "next morning", created_at=day + DAY + 3600)
    put(service, "work", "a work memory", created_at=day + 7200)
    put(service, "home", "long before the window", created_at=day - 5 * DAY)
    assert service.backend.memories.created_per_day(day) == [
        ("home", "2024-10-04", 2),
        ("work", "2024-10-04", 1),
        ("home", "2024-10-05", 1),
    ]
    assert service.created_per_day(2, now=day + DAY + 5000) == service.backend.memories.created_per_day(day)
    assert service.created_per_day(1, now=day + DAY + 5000) == [("home", "2024-10-05", 1)]


def test_superseded_by_lists_what_a_correction_replaced_in_its_namespace(service: MemoryService) -> None:
    old = service.remember("the dentist is on Tuesday").id
    other = service.remember("the vet is on Friday").id
    fixed = service.remember("the dentist is on Wednesday", supersedes=[old]).id
    [correction] = service.backend.memories.get("home", [fixed])
    assert [m.id for m in service.superseded_by(correction)] == [old]
    [unrelated] = service.backend.memories.get("home", [other])
    assert service.superseded_by(unrelated) == []


def test_neighbours_in_time_are_the_memories_written_around_it_in_its_namespace(service: MemoryService) -> None:
    ids = [service.remember(f"step {i} of the move").id for i in range(6)]
    service.remember("a memory of another namespace", namespace="work")
    [middle] = service.backend.memories.get("home", [ids[2]])
    earlier, later = service.neighbours_in_time(middle, width=3)
    assert [m.id for m in earlier] == ids[0:2]
    assert [m.id for m in later] == ids[3:6]


def test_sweeps_are_recorded_durably_newest_first_and_bounded(harness: Harness) -> None:
    memory = harness.open()
    try:
        gone = memory.remember("a reminder that runs out", namespace="home", ttl_days=1).id
        memory.auto_forget(dry_run=True, now=time.time() + 2 * DAY)
        assert memory.recent_sweeps() == []  # a dry run is not a sweep
        memory.auto_forget(now=time.time() + 2 * DAY)
        memory.auto_forget()
    finally:
        memory.close()
    reopened = harness.open()
    try:
        sweeps = reopened.recent_sweeps()
        assert [s["expired"] for s in sweeps] == [0, 1]
        assert sweeps[1]["ids"]["expired"] == [gone]
        assert {"at", "seconds", "superseded", "low_importance"} <= set(sweeps[0])
        for _ in range(RECENT_SWEEPS_KEPT + 3):
            reopened.auto_forget()
        assert len(reopened.recent_sweeps()) == RECENT_SWEEPS_KEPT
    finally:
        reopened.close()


def test_a_page_anchor_beyond_any_key_is_the_same_on_both_backends(service: MemoryService) -> None:
    """Review finding (8621024): the service checks that before_key/after_key are ints, not that they fit a
    key: 2**63 is a plain comparison on PostgreSQL (an empty page) but an OverflowError out of SQLite."""
    service.remember("a note")
    outcomes = []
    for kwargs in ({"after_key": 2**63}, {"before_key": 2**63}, {"after_key": -(2**63) - 1}):
        try:
            outcomes.append(len(service.recent("home", limit=10, **kwargs)))  # type: ignore[arg-type]
        except InvalidInput:
            outcomes.append("invalid")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    assert all(o in (0, 1, "invalid") for o in outcomes), outcomes
