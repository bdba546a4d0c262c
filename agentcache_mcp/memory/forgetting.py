"""Forgetting: explicit forget (by ids or by filter) and the auto-forget policy, over the ports.

Every delete is one `MemoryRepository.delete(filter)`: decided and done in one transaction, so what a forget
reports is exactly what it deleted. The backend erases a deleted memory from every index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .facts import SalientFacts, facts_agree, salient_facts
from .model import DAY, ForgetResult, Memory, MemoryFilter
from .ports import EmbeddingStore, MemoryRepository, VectorIndex
from .validation import InvalidInput

log = logging.getLogger(__name__)

DEDUP_WATERMARK_KEY = "auto_forget_dedup_checked_pk"
DEDUP_BLOCK_ROWS = 128
"""New memories compared per matrix product: 128 x 100k similarities is a 51 MB block, so the first sweep
over a large store does not add hundreds of MB to the server's memory."""


@dataclass(slots=True)
class AutoForgetReport:
    dry_run: bool
    expired: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    low_importance: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "expired": len(self.expired),
            "superseded": len(self.superseded),
            "low_importance": len(self.low_importance),
        }


def forget(
    memories: MemoryRepository,
    *,
    namespace: str,
    namespace_given: bool,
    ids: list[str],
    tags: list[str],
    older_than_days: float | None,
    dry_run: bool | None,
    now: float,
) -> ForgetResult:
    """In exactly one namespace. By ids: delete them now (dry_run defaults to False); ids of other namespaces
    are reported as not found. By filter (tags, older_than_days, or the whole namespace when it was named):
    a dry run unless dry_run=False."""
    if ids:
        if tags or older_than_days is not None:
            raise InvalidInput("forget takes either ids or a filter (tags, older_than_days), not both")
        where = MemoryFilter(namespace=namespace, ids=tuple(ids))
        result = _preview(memories, where) if dry_run else ForgetResult(memories.delete(where), False)
        found = set(result.deleted)
        result.not_found = [i for i in ids if i not in found]
        return result
    if not namespace_given and not tags and older_than_days is None:
        raise InvalidInput(
            "forget needs ids, or a filter: tags, older_than_days, or namespace (to forget a whole namespace)"
        )
    where = MemoryFilter(
        namespace=namespace,
        tags=tuple(tags),
        created_before=None if older_than_days is None else now - older_than_days * DAY,
    )
    if dry_run is None or dry_run:
        return _preview(memories, where)
    return ForgetResult(memories.delete(where), False)


PREVIEW_CHARS = 80


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """The start of a memory's text on one line, for a person checking what a forget would delete."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _preview(memories: MemoryRepository, where: MemoryFilter) -> ForgetResult:
    found = memories.find(where)
    return ForgetResult([m.id for m in found], True, previews=[(m.id, preview(m.text)) for m in found])


@dataclass(slots=True, frozen=True)
class AutoForgetPolicy:
    duplicate_cosine: float
    low_importance: float
    low_importance_age_days: float


def auto_forget(
    memories: MemoryRepository,
    vectors: VectorIndex,
    embeddings: EmbeddingStore,
    policy: AutoForgetPolicy,
    *,
    dry_run: bool,
    now: float,
) -> AutoForgetReport:
    """The policy, one rule at a time; returns the ids each rule deleted or superseded (or would, dry)."""
    report = AutoForgetReport(dry_run=dry_run)

    # 1. TTL: memories past their expires_at are deleted (what they superseded comes back).
    expired = MemoryFilter(namespace=None, expired_at=now)
    report.expired = [m.id for m in memories.find(expired)] if dry_run else _delete_in_chunks(memories, expired)
    gone = set(report.expired)

    # 2. Near-duplicates, among memories added since the last sweep.
    checked = int(memories.get_setting(DEDUP_WATERMARK_KEY) or 0)
    first_pending = embeddings.first_pending_key(vectors.model_id)
    mark = embeddings.max_key() if first_pending is None else first_pending - 1
    pairs = _near_duplicates(memories, vectors, policy.duplicate_cosine, checked, mark, gone, now)
    if dry_run:
        report.superseded = [loser for loser, _ in pairs]
    else:
        # Re-checked when written: a memory re-remembered as more important meanwhile is not superseded.
        report.superseded = memories.supersede(pairs, now)
        if mark > checked:
            memories.put_setting(DEDUP_WATERMARK_KEY, str(mark))

    # 3. Unimportant and unused: neither recalled nor remembered again for the configured age.
    stale = MemoryFilter(
        namespace=None,
        max_importance=policy.low_importance,
        unused_since=now - policy.low_importance_age_days * DAY,
    )
    if dry_run:
        report.low_importance = [m.id for m in memories.find(stale) if m.id not in gone]
    else:
        report.low_importance = _delete_in_chunks(memories, stale)
    return report


SWEEP_CHUNK = 500
"""A sweep deletes at most this many memories per transaction, so it never holds the store for long (a
shutdown, a remember, another process wait for one chunk at most)."""


def _delete_in_chunks(memories: MemoryRepository, where: MemoryFilter) -> list[str]:
    deleted: list[str] = []
    while True:
        chunk = memories.delete(where, limit=SWEEP_CHUNK)
        deleted += chunk
        if len(chunk) < SWEEP_CHUNK:
            return deleted


def keeps_over(a: Memory, b: Memory) -> bool:
    """Of two near-duplicates, is `a` the one to keep? The more important one; at equal importance the
    newer. A memory is never superseded by a less important one."""
    return (a.importance, a.created_at, a.key) > (b.importance, b.created_at, b.key)


def _facts_of(cache: dict[int, SalientFacts], memory: Memory) -> SalientFacts:
    if memory.key not in cache:
        cache[memory.key] = salient_facts(memory.text)
    return cache[memory.key]


def _near_duplicates(
    memories: MemoryRepository,
    vectors: VectorIndex,
    threshold: float,
    checked: int,
    mark: int,
    gone: set[str],
    now: float,
) -> list[tuple[str, str]]:
    """(superseded id, superseding id) for memories added since the watermark that nearly repeat another live
    memory of their namespace: cosine >= threshold, and the same salient facts (numbers, times, dates,
    identifiers, names, negation: see facts.py), so a memory is never hidden behind one that says another day
    or amount in the same words. Costs new x namespace size, not namespace size squared."""
    if mark <= checked:
        return []
    new = memories.find(MemoryFilter(namespace=None, key_after=checked, key_upto=mark, live_at=now))
    by_namespace: dict[str, set[int]] = {}
    for m in new:
        if m.id not in gone:
            by_namespace.setdefault(m.namespace, set()).add(m.key)
    pairs: list[tuple[str, str]] = []
    for namespace, new_keys in by_namespace.items():
        keys, matrix = vectors.vectors(namespace)
        if not len(keys):
            continue
        rows = np.nonzero(np.fromiter((int(k) in new_keys for k in keys), dtype=bool, count=len(keys)))[0]
        candidates: list[tuple[int, int]] = []
        for start in range(0, len(rows), DEDUP_BLOCK_ROWS):
            block = rows[start : start + DEDUP_BLOCK_ROWS]
            sims = matrix[block] @ matrix.T
            for r_local, r in enumerate(block):
                sims[r_local, r] = -1.0  # not a duplicate of itself
                candidates.extend((int(keys[r]), int(keys[c])) for c in np.nonzero(sims[r_local] >= threshold)[0])
        if not candidates:
            continue
        involved = sorted({k for pair in candidates for k in pair})
        live = memories.live_keys(namespace, involved, MemoryFilter(namespace=namespace, live_at=now))
        found = memories.get_by_keys(namespace, [k for k in involved if k in live])
        facts: dict[int, SalientFacts] = {}
        superseded: set[int] = set()
        for a, b in candidates:
            if a not in found or b not in found or found[a].id in gone or found[b].id in gone:
                continue
            if not facts_agree(_facts_of(facts, found[a]), _facts_of(facts, found[b])):
                continue  # alike in wording, but another day, time, amount, key or name: a different fact
            keep, lose = (found[a], found[b]) if keeps_over(found[a], found[b]) else (found[b], found[a])
            if keep.key in superseded or lose.key in superseded:
                continue
            superseded.add(lose.key)
            pairs.append((lose.id, keep.id))
    return pairs
