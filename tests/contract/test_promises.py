"""The promises of the memory core, one test each, run against every backend (tests/contract/harness.py).

They speak to the service and the ports only, never to a backend's SQL, so the next backend must pass them
unchanged.
"""

from __future__ import annotations

import threading
import time

import pytest

from agentcache_mcp.memory.fusion import FusionParams
from agentcache_mcp.memory.model import DAY, MemoryFilter, NewMemory, content_hash, new_id
from agentcache_mcp.memory.service import MemoryService, merge_remembered
from agentcache_mcp.memory.validation import MAX_METADATA_KEYS, MAX_TAGS, InvalidInput

from .harness import Harness
from conftest import HashEmbedder

SECRET = "my bank PIN is 4921 xylqvortish quarblemost"
SECRET_TOKENS = [b"xylqvort", b"quarblem"]  # prefixes of the words and of their porter stems
KEYWORD_ONLY = FusionParams(method="keyword")


def put(memory: MemoryService, namespace: str, text: str, *, importance: float = 0.5, created_at: float) -> str:
    """Store a memory with a chosen creation time, through the repository port."""
    new = NewMemory(new_id(), namespace, text, content_hash(text), [], importance, {}, created_at, None)
    return memory.backend.memories.remember(new, merge_remembered)[0].id


def key_of(memory: MemoryService, memory_id: str) -> int:
    [found] = memory.backend.memories.get(None, [memory_id])
    return found.key


def assert_erased(harness: Harness, memory: MemoryService, secret_key: int, namespaces: list[str]) -> None:
    """Nothing ranks by the forgotten words, no index holds it, and after the erase (PostgreSQL's runs on a
    schedule: AGENTCACHE_PG_ERASE) and close no file holds its bytes."""
    for namespace in namespaces:
        assert memory.recall("xylqvortish quarblemost", namespace=namespace, fusion=KEYWORD_ONLY) == []
        assert memory.backend.keywords.search(namespace, ["xylqvortish"], 10, MemoryFilter(namespace), 0.4) == []
        query = memory.embedder.embed([SECRET])[0]
        assert memory.backend.vectors.scores_for(namespace, query, [secret_key]) == {}
    assert all(key != secret_key for key, _, _ in memory.backend.embeddings.pending("test-hash-embedder", 1000))
    memory.backend.erase()
    memory.close()
    if not harness.can_read_files:
        pytest.skip("this PostgreSQL server's files cannot be read from here: the byte check needs the bundled one")
    stored = harness.stored_bytes()
    assert SECRET.encode() not in stored
    for token in SECRET_TOKENS:
        assert token not in stored, token


def remember_around_secret(memory: MemoryService, **secret_args: object) -> tuple[str, str]:
    """A memory before the secret and one after it (indexed with the secret's words as context)."""
    memory.remember("the weather was mild that spring", namespace="home")
    secret = memory.remember(SECRET, namespace="home", **secret_args).id  # type: ignore[arg-type]
    after = memory.remember("we walked to the harbour afterwards", namespace="home").id
    memory.remember("an unrelated note in another project", namespace="work")
    memory.embed_pending()
    found = [h.id for h in memory.recall("xylqvortish quarblemost", namespace="home", fusion=KEYWORD_ONLY)]
    assert found[:2] == [secret, after]  # the next memory matches too, through its context
    return secret, after


# --- forget erases -------------------------------------------------------------------------------------


def test_forget_by_id_erases_the_text_from_every_index_and_file(harness: Harness) -> None:
    memory = harness.open()
    secret, after = remember_around_secret(memory)
    key = key_of(memory, secret)
    assert memory.forget(ids=[secret], namespace="home").deleted == [secret]
    assert_erased(harness, memory, key, ["home", "work", "default"])
    reopened = harness.open()
    try:
        assert reopened.recall("harbour afterwards", namespace="home")[0].id == after  # the others are intact
        assert reopened.recall("weather spring", namespace="home")
    finally:
        reopened.close()


def test_forget_by_filter_erases_the_text(harness: Harness) -> None:
    memory = harness.open(namespace="home")
    secret, _ = remember_around_secret(memory, tags=["bank"])
    key = key_of(memory, secret)
    assert memory.forget(tags=["bank"], dry_run=False).deleted == [secret]
    assert_erased(harness, memory, key, ["home", "work"])


def test_expiry_deletes_erase_the_text(harness: Harness) -> None:
    memory = harness.open()
    secret, _ = remember_around_secret(memory, ttl_days=1)
    key = key_of(memory, secret)
    assert memory.auto_forget(now=time.time() + 2 * DAY).expired == [secret]
    assert_erased(harness, memory, key, ["home"])


def test_auto_forget_deletes_erase_the_text(harness: Harness) -> None:
    memory = harness.open()
    memory.remember("the weather was mild that spring", namespace="home")
    secret = put(memory, "home", SECRET, importance=0.1, created_at=time.time() - 400 * DAY)
    memory.remember("we walked to the harbour afterwards", namespace="home")
    memory.embed_pending()
    key = key_of(memory, secret)
    assert memory.auto_forget().low_importance == [secret]
    assert_erased(harness, memory, key, ["home"])


# --- one namespace per call ----------------------------------------------------------------------------


def test_forget_by_filter_without_namespace_acts_in_the_default_namespace_only(service: MemoryService) -> None:
    mine = service.remember("draft notes", tags=["tmp"]).id
    theirs = service.remember("draft notes elsewhere", namespace="other", tags=["tmp"]).id
    preview = service.forget(tags=["tmp"])
    assert preview.dry_run and preview.deleted == [mine]
    assert service.forget(tags=["tmp"], dry_run=False).deleted == [mine]
    assert [m.id for m in service.backend.memories.get(None, [mine, theirs])] == [theirs]


def test_forget_by_ids_of_another_namespace_deletes_nothing(service: MemoryService) -> None:
    theirs = service.remember("belongs to another project", namespace="other").id
    mine = service.remember("belongs to this project").id
    result = service.forget(ids=[theirs, mine])
    assert result.deleted == [mine] and result.not_found == [theirs]
    assert service.forget(ids=[theirs], dry_run=True).not_found == [theirs]
    assert [m.id for m in service.backend.memories.get(None, [theirs])] == [theirs]


def test_recall_and_forget_never_cross_namespaces(service: MemoryService) -> None:
    service.remember("phoenix launches in may", namespace="alpha")
    service.embed_pending()
    assert service.recall("phoenix launch") == []
    assert service.recall("phoenix launch", namespace="beta") == []
    assert service.forget(namespace="beta", dry_run=True).deleted == []
    assert len(service.recall("phoenix launch", namespace="alpha")) == 1


# --- re-remembering never shortens a life --------------------------------------------------------------


def test_re_remembering_keeps_the_longer_life_and_the_higher_importance(service: MemoryService) -> None:
    forever = service.remember("keep this forever", importance=0.9).id
    service.remember("keep this forever", ttl_days=1, importance=0.1)
    [m] = service.backend.memories.get(None, [forever])
    assert m.expires_at is None and m.importance == 0.9

    short = service.remember("a ten day note", ttl_days=10).id
    service.remember("a ten day note", ttl_days=1)
    [m] = service.backend.memories.get(None, [short])
    assert m.expires_at is not None and m.expires_at > time.time() + 9 * DAY
    service.remember("a ten day note", ttl_days=30)
    [m] = service.backend.memories.get(None, [short])
    assert m.expires_at is not None and m.expires_at > time.time() + 29 * DAY
    service.remember("a ten day note")  # no expiry beats any
    [m] = service.backend.memories.get(None, [short])
    assert m.expires_at is None


def test_merged_tags_and_metadata_stay_within_the_limits(service: MemoryService) -> None:
    memory_id = service.remember("tagged often", tags=[f"t{i}" for i in range(MAX_TAGS)]).id
    with pytest.raises(InvalidInput, match=f"limit of {MAX_TAGS}"):
        service.remember("tagged often", tags=["one-more"])
    many = {f"k{i}": i for i in range(MAX_METADATA_KEYS)}
    service.remember("described often", metadata=many)
    with pytest.raises(InvalidInput, match=f"limit of {MAX_METADATA_KEYS}"):
        service.remember("described often", metadata={"extra": 1})
    [m] = service.backend.memories.get(None, [memory_id])
    assert len(m.tags) == MAX_TAGS and "one-more" not in m.tags  # a refused merge wrote nothing


# --- superseding is reversible and respects importance --------------------------------------------------


def test_a_memory_is_not_superseded_by_a_less_important_one(service: MemoryService) -> None:
    vital = service.remember("the server root password is in the red safe", importance=1.0).id
    trivial = service.remember("the server root password is in the red safe!", importance=0.1, ttl_days=1).id
    service.embed_pending()
    assert service.auto_forget().superseded == [trivial]
    [m] = service.backend.memories.get(None, [vital])
    assert m.superseded_by is None
    assert service.auto_forget(now=time.time() + 2 * DAY).expired == [trivial]
    assert [h.id for h in service.recall("root password safe")][:1] == [vital]


def test_deleting_the_superseding_memory_revives_the_superseded(service: MemoryService) -> None:
    older = service.remember("the office wifi password is hunter2").id
    newer = service.remember("the office wifi password is hunter2!").id
    service.embed_pending()
    assert service.auto_forget().superseded == [older]
    assert older not in [h.id for h in service.recall("wifi password")]
    service.forget(ids=[newer])
    [m] = service.backend.memories.get(None, [older])
    assert m.superseded_by is None
    assert [h.id for h in service.recall("wifi password")] == [older]


def test_expiry_of_the_superseding_memory_revives_the_superseded(service: MemoryService) -> None:
    older = service.remember("the parking spot is B12").id
    newer = service.remember("the parking spot is B12!", ttl_days=1).id
    service.embed_pending()
    assert service.auto_forget().superseded == [older]
    key = key_of(service, older)
    memories = service.backend.memories
    assert memories.live_keys("home", [key], MemoryFilter("home", live_at=time.time())) == set()
    later = time.time() + 2 * DAY
    assert memories.live_keys("home", [key], MemoryFilter("home", live_at=later)) == {key}
    assert [m.id for m in memories.find(MemoryFilter("home", live_at=later))] == [older]
    assert service.auto_forget(now=later).expired == [newer]
    assert [h.id for h in service.recall("parking spot")] == [older]


# --- deletes are exact ---------------------------------------------------------------------------------


def test_row_keys_are_never_reused(service: MemoryService) -> None:
    first = service.remember("first")
    last = service.remember("second")
    last_key = key_of(service, last.id)
    service.forget(ids=[first.id, last.id])
    again = service.remember("third")
    assert key_of(service, again.id) > last_key


def test_what_a_forget_reports_is_exactly_what_it_deleted(harness: Harness) -> None:
    """A writer keeps adding matching memories while forgets run: every id is either reported deleted and
    gone, or never reported and still there."""
    writer, forgetter = harness.open(namespace="home"), harness.open(namespace="home")
    written: list[str] = []
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            written.append(writer.remember(f"scratch note {i}", tags=["scratch"]).id)
            i += 1

    thread = threading.Thread(target=write)
    thread.start()
    deleted: list[str] = []
    try:
        for _ in range(20):
            deleted += forgetter.forget(tags=["scratch"], dry_run=False).deleted
    finally:
        stop.set()
        thread.join()
    try:
        remaining = {m.id for m in forgetter.backend.memories.find(MemoryFilter("home"))}
        assert len(deleted) == len(set(deleted))
        assert not remaining & set(deleted)
        assert remaining | set(deleted) == set(written)
    finally:
        writer.close()
        forgetter.close()


# --- ranking stays in its namespace --------------------------------------------------------------------


def test_common_term_filter_counts_per_namespace_and_own_text(service: MemoryService) -> None:
    from agentcache_mcp.backends.sqlite.keywords import PRUNE_TERMS_FROM_ROWS

    now = time.time()
    n = PRUNE_TERMS_FROM_ROWS
    memories = service.backend.memories
    for i in range(n):  # "alpha" in 10% of "small"; "beta" in every other one's context only
        put(
            service,
            "small",
            f"small entry {i}" + (" alpha" if i % 10 == 0 else "") + (" beta" if i % 2 else ""),
            created_at=now,
        )
    for i in range(n):  # "alpha" in every memory of "big"
        put(service, "big", f"alpha big entry {i}", created_at=now)
    keywords = service.backend.keywords
    assert keywords.informative_terms("small", ["alpha", "entry"]) == ["alpha"]  # big's alpha does not count
    assert keywords.informative_terms("big", ["alpha", "zeta"]) == ["zeta"]
    assert keywords.informative_terms("small", ["beta", "zeta"]) == ["beta", "zeta"]  # half is not more than half
    assert len(memories.counts_by_namespace()) == 2


def test_keyword_search_is_confined_to_its_namespace(service: MemoryService) -> None:
    service.remember("shared words here", namespace="a-b")
    other = service.remember("shared words here too", namespace="a.b").id
    hits = service.backend.keywords.search("a.b", ["shared", "words"], 10, MemoryFilter("a.b"), 0.4)
    assert [service.backend.memories.get_by_keys("a.b", [k])[k].id for k, _ in hits] == [other]
    assert service.backend.memories.get_by_keys("a-b", [k for k, _ in hits]) == {}


def test_texts_are_read_for_the_given_memories_of_one_namespace_only(service: MemoryService) -> None:
    mine = service.remember("my own words", namespace="mine")
    theirs = service.remember("their words", namespace="theirs")
    memories = service.backend.memories
    key = {m.id: m.key for m in memories.get("mine", [mine.id])}[mine.id]
    other = {m.id: m.key for m in memories.get("theirs", [theirs.id])}[theirs.id]
    assert memories.texts("mine", [key, other, 10**9]) == {key: "my own words"}
    assert memories.texts("mine", [key], prefix=6) == {key: "my own"}
    assert memories.texts("mine", [key], prefix=100) == {key: "my own words"}
    assert memories.texts("mine", []) == {}


# --- stale means unused --------------------------------------------------------------------------------


def test_stale_rule_counts_re_remembering_and_returned_hits_only(service: MemoryService) -> None:
    old = time.time() - 400 * DAY
    untouched = put(service, "home", "pelican trivia one", importance=0.1, created_at=old)
    re_remembered = put(service, "home", "pelican trivia two", importance=0.1, created_at=old)
    returned = put(service, "home", "pelican trivia three", importance=0.1, created_at=old)
    service.remember("pelican trivia two", importance=0.1)
    [hit] = service.recall("pelican three", limit=1)
    assert hit.id == returned  # the others matched "pelican" too but were cut: not accessed
    report = service.auto_forget(dry_run=True)
    assert report.low_importance == [untouched]
    assert service.auto_forget().low_importance == [untouched]
    assert {m.id for m in service.backend.memories.find(MemoryFilter("home"))} == {re_remembered, returned}


# --- recall never waits on a disk sync -----------------------------------------------------------------


def test_recall_writes_nothing_and_the_flush_records_accesses(
    service: MemoryService, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory_id = service.remember("the spare key is under the blue pot").id
    writes: list[object] = []
    original = service.backend.memories.record_access
    monkeypatch.setattr(service.backend.memories, "record_access", lambda a: (writes.append(a), original(a)))
    for _ in range(3):
        assert service.recall("spare key")[0].id == memory_id
    assert writes == []
    assert service.flush_accesses() == 1 and len(writes) == 1
    [m] = service.backend.memories.get(None, [memory_id])
    assert m.access_count == 3 and m.last_accessed_at is not None


def test_buffered_accesses_are_written_at_close(harness: Harness) -> None:
    memory = harness.open()
    memory_id = memory.remember("the spare key is under the blue pot").id
    memory.recall("spare key")
    memory.close()
    reopened = harness.open()
    try:
        [m] = reopened.backend.memories.get(None, [memory_id])
        assert m.access_count == 1
    finally:
        reopened.close()


# --- vectors are keyed by model ------------------------------------------------------------------------


def test_two_models_share_a_store_without_re_embedding_each_other(harness: Harness) -> None:
    class OtherModel(HashEmbedder):
        model_id = "another-model"

    a = harness.open()
    b = harness.open(embedder=OtherModel(dim=32))
    try:
        a.remember("model switch test", namespace="ns")
        assert a.embed_pending() == 1 and b.embed_pending() == 1
        assert a.embed_pending() == 0 and b.embed_pending() == 0  # neither undoes the other's work
        assert a.pending_embeddings() == 0 and b.pending_embeddings() == 0
        a.sync_vectors()
        b.sync_vectors()
        assert len(a.backend.vectors) == 1 and len(b.backend.vectors) == 1
        assert a.recall("MODEL", namespace="ns") and b.recall("MODEL", namespace="ns")
    finally:
        a.close()
        b.close()


def test_forgotten_tokens_leave_no_trace_in_a_large_keyword_index(harness: Harness) -> None:
    """Index structures of a large store (e.g. FTS5's leaf-page separator terms) must not keep a forgotten
    token either: near-sequential tokens such as card numbers are where a separator is a whole token."""
    memory = harness.open()
    ids = {f"5550{n:04d}": memory.remember(f"card number 5550{n:04d} expires soon").id for n in range(1500)}
    victims = [number for number in ids if 600 <= int(number[4:]) < 1000]
    assert memory.forget(ids=[ids[v] for v in victims]).deleted == [ids[v] for v in victims]
    memory.backend.erase()
    memory.close()
    if not harness.can_read_files:
        pytest.skip("this PostgreSQL server's files cannot be read from here: the byte check needs the bundled one")
    stored = harness.stored_bytes()
    assert [v for v in victims if v.encode() in stored] == []
    assert b"55501200" in stored  # the others are still there


def test_a_memory_made_more_important_during_a_sweep_is_not_superseded(
    service: MemoryService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep decides from one read and writes later; a re-remember in between must win."""
    older = service.remember("the backup key is in the grey cabinet").id
    newer = service.remember("the backup key is in the grey cabinet!").id
    service.embed_pending()
    write = service.backend.memories.supersede

    def re_remember_first(pairs: list[tuple[str, str]], now: float) -> list[str]:
        assert pairs == [(older, newer)]
        service.remember("the backup key is in the grey cabinet", importance=1.0)  # the sweep's loser, now vital
        return write(pairs, now)

    monkeypatch.setattr(service.backend.memories, "supersede", re_remember_first)
    assert service.auto_forget().superseded == []
    [m] = service.backend.memories.get(None, [older])
    assert m.superseded_by is None and m.importance == 1.0


# --- settings ------------------------------------------------------------------------------------------


def test_a_setting_written_once_keeps_the_first_value_for_every_process(harness: Harness) -> None:
    """Processes creating a shared value at once (the web UI's session secret) all get the first one's."""
    services = [harness.open(), harness.open(), harness.open()]
    try:
        seen: list[str] = []
        start = threading.Barrier(len(services) * 2)

        def create(memory: MemoryService, value: str) -> None:
            start.wait()
            seen.append(memory.backend.memories.put_setting_once("shared", value))

        threads = [
            threading.Thread(target=create, args=(m, f"value-{i}-{j}"))
            for i, m in enumerate(services)
            for j in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen) == 6 and len(set(seen)) == 1 and seen[0].startswith("value-")
        assert services[0].backend.memories.put_setting_once("shared", "later") == seen[0]
        assert all(m.backend.memories.get_setting("shared") == seen[0] for m in services)
        assert len({m.ui_secret() for m in services}) == 1
    finally:
        for m in services:
            m.close()


def test_a_process_whose_first_read_missed_the_secret_gets_the_one_created_meanwhile(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race ui_secret() must win, made deterministic: `late` reads no secret, then `first` creates one
    before `late` writes its own. `late` must end up with first's secret (the old write-then-read-back let
    `late` overwrite it, logging out sessions `first` had signed). The thread test in test_ui.py only sees
    this in about one run of four."""
    from agentcache_mcp.memory.service import UI_SECRET_KEY

    first, late = harness.open(), harness.open()
    try:
        real_get = late.backend.memories.get_setting
        created: list[str] = []

        def get_setting(name: str) -> str | None:
            value = real_get(name)
            if name == UI_SECRET_KEY and not created:
                created.append(first.ui_secret())  # right after late's read found nothing
            return value

        monkeypatch.setattr(late.backend.memories, "get_setting", get_setting)
        assert late.ui_secret() == created[0]
        assert first.backend.memories.get_setting(UI_SECRET_KEY) == created[0]
    finally:
        first.close()
        late.close()


def test_an_empty_stored_ui_secret_is_replaced_not_fatal(harness: Harness) -> None:
    """ui_secret() treats an empty stored value as no secret (`if stored:`), but put_setting_once keeps it:
    since 0fdcf52 the UI answers every page with 503 until someone deletes the row by hand. Before, the
    write replaced it and the UI started. (An empty value: a hand edit meant to rotate the secret, a
    restore of a doctored copy.)"""
    from agentcache_mcp.memory.service import UI_SECRET_KEY

    memory = harness.open()
    try:
        memory.backend.memories.put_setting(UI_SECRET_KEY, "")
        secret = memory.ui_secret()
        assert secret and memory.ui_secret() == secret
    finally:
        memory.close()
