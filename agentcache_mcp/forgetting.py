"""Forgetting: explicit forget (by ids or by filter) and the auto_forget policy over the store.

Deleting a row removes its FTS5 entry and logs a change in the same transaction (store triggers), so a
forgotten memory leaves nothing behind in either index.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field

import numpy as np

from .config import Settings
from .store import Store
from .validation import InvalidInput, validate_namespace, validate_positive_days, validate_tags
from .vectors import VectorIndex

log = logging.getLogger(__name__)

DAY = 86_400.0
MAX_FORGET_IDS = 1000
DEDUP_WATERMARK_KEY = "auto_forget_dedup_checked_pk"
DEDUP_BLOCK_ROWS = 128
"""New memories compared per matrix product: 128 x 100k similarities is a 51 MB block, so the first sweep
over a large store does not add hundreds of MB to the server's memory."""


@dataclass(slots=True)
class ForgetResult:
    deleted: list[str]
    """The ids deleted, or with dry_run the ids that would be."""
    dry_run: bool


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
    store: Store,
    *,
    ids: list[str] | None = None,
    namespace: str | None = None,
    tags: list[str] | None = None,
    older_than_days: float | None = None,
    dry_run: bool | None = None,
) -> ForgetResult:
    """By ids: delete them now (dry_run defaults to False). By filter: dry run unless dry_run=False."""
    ids = list(dict.fromkeys(_validate_ids(ids)))
    clean_tags = validate_tags(tags)
    age = validate_positive_days(older_than_days, "older_than_days")
    if namespace is not None:
        namespace = validate_namespace(namespace)

    if ids:
        if clean_tags or age is not None:
            raise InvalidInput("forget takes either ids or a filter (tags, older_than_days), not both")
        rows = [r for r in store.get_by_ids(ids) if namespace is None or r.namespace == namespace]
        dry = bool(dry_run)
        if dry:
            return ForgetResult([r.id for r in rows], True)
        return ForgetResult(store.delete_pks([r.pk for r in rows]), False)

    if namespace is None and not clean_tags and age is None:
        raise InvalidInput("forget needs ids, or a filter: namespace, tags and/or older_than_days")
    clauses, params = ["1 = 1"], []
    if namespace is not None:
        clauses.append("m.namespace = ?")
        params.append(namespace)
    for tag in clean_tags:
        clauses.append("EXISTS (SELECT 1 FROM json_each(m.tags) WHERE json_each.value = ?)")
        params.append(tag)
    if age is not None:
        clauses.append("m.created_at < ?")
        params.append(time.time() - age * DAY)
    matched = store.select_pks(" AND ".join(clauses), params)
    dry = True if dry_run is None else bool(dry_run)
    if dry:
        return ForgetResult([i for _, i in matched], True)
    return ForgetResult(store.delete_pks([pk for pk, _ in matched]), False)


def _validate_ids(ids: object) -> list[str]:
    if ids is None:
        return []
    if isinstance(ids, str) or not isinstance(ids, list | tuple):
        raise InvalidInput("ids must be a list of memory ids")
    if len(ids) > MAX_FORGET_IDS:
        raise InvalidInput(f"forget takes at most {MAX_FORGET_IDS} ids per call")
    for memory_id in ids:
        if not isinstance(memory_id, str) or not memory_id or len(memory_id) > 64 or "\x00" in memory_id:
            raise InvalidInput(f"not a memory id: {str(memory_id)[:70]!r}")
    return list(ids)


def auto_forget(
    store: Store,
    vectors: VectorIndex | None,
    settings: Settings,
    model_id: str,
    *,
    dry_run: bool,
    now: float | None = None,
) -> AutoForgetReport:
    """The policy, one rule at a time; returns the ids each rule deleted or superseded (or would, dry)."""
    now = time.time() if now is None else now
    report = AutoForgetReport(dry_run=dry_run)

    # 1. TTL: memories past their expires_at are deleted.
    expired = store.select_pks("m.expires_at IS NOT NULL AND m.expires_at <= ?", [now])
    report.expired = [i for _, i in expired]
    if not dry_run:
        store.delete_pks([pk for pk, _ in expired])

    # 2. Near-duplicates: the older of two memories in one namespace whose vectors have cosine >= threshold
    # is marked superseded by the newer (kept, never returned by recall). Identical normalised text cannot
    # occur twice in a namespace: remember merges it into the existing memory.
    checked = int(
        store.read(
            lambda db: (db.execute("SELECT value FROM meta WHERE key = ?", (DEDUP_WATERMARK_KEY,)).fetchone() or ["0"])[
                0
            ]
        )
    )
    mark = _dedup_mark(store, model_id)
    pairs = _near_duplicates(
        store, vectors, settings.duplicate_cosine, checked, mark, exclude={pk for pk, _ in expired}
    )
    report.superseded = [older_id for _, older_id, _ in pairs]
    if not dry_run:
        if pairs:
            store.supersede([(older_pk, newer_id) for older_pk, _, newer_id in pairs])
        store.write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (DEDUP_WATERMARK_KEY, str(mark))
            )
        )

    # 3. Unimportant and never recalled, and old.
    stale = store.select_pks(
        "m.importance <= ? AND m.access_count = 0 AND m.created_at < ?",
        [settings.low_importance, now - settings.low_importance_age_days * DAY],
    )
    already_deleted = set(report.expired)
    stale = [(pk, i) for pk, i in stale if i not in already_deleted]
    report.low_importance = [i for _, i in stale]
    if not dry_run:
        store.delete_pks([pk for pk, _ in stale])
    return report


def _near_duplicates(
    store: Store, vectors: VectorIndex | None, threshold: float, checked: int, mark: int, exclude: set[int]
) -> list[tuple[int, str, str]]:
    """(older pk, older id, newer id) for memories added since the last sweep that nearly repeat another.

    Only memories newer than the watermark are compared (against everything live in their namespace), so a
    sweep costs new x namespace size, not namespace size squared.
    """
    if vectors is None or mark <= checked:
        return []
    live = store.read(
        lambda db: db.execute(
            "SELECT pk, id, namespace, created_at FROM memories WHERE superseded_by IS NULL ORDER BY namespace, pk"
        ).fetchall()
    )
    by_namespace: dict[str, list[tuple[int, str, float]]] = {}
    for pk, memory_id, namespace, created in live:
        if pk not in exclude:
            by_namespace.setdefault(namespace, []).append((pk, memory_id, created))
    pairs: list[tuple[int, str, str]] = []
    for namespace, members in by_namespace.items():
        if not any(checked < pk <= mark for pk, _, _ in members):
            continue
        info = {pk: (memory_id, created) for pk, memory_id, created in members}
        pks, matrix = vectors.vectors(namespace)
        keep = np.fromiter((int(p) in info for p in pks), dtype=bool, count=len(pks))
        pks, matrix = pks[keep], matrix[keep]
        new_rows = np.nonzero((pks > checked) & (pks <= mark))[0]
        superseded: set[int] = set()
        for start in range(0, len(new_rows), DEDUP_BLOCK_ROWS):
            rows = new_rows[start : start + DEDUP_BLOCK_ROWS]
            sims = matrix[rows] @ matrix.T
            for r_local, r in enumerate(rows):
                sims[r_local, r] = -1.0  # not a duplicate of itself
                for c in np.nonzero(sims[r_local] >= threshold)[0]:
                    a, b = int(pks[r]), int(pks[c])
                    older, newer = sorted((a, b), key=lambda p: (info[p][1], p))
                    if older in superseded or newer in superseded:
                        continue
                    superseded.add(older)
                    pairs.append((older, info[older][0], info[newer][0]))
    return pairs


def _dedup_mark(store: Store, model_id: str) -> int:
    """The highest pk such that every memory up to it has a vector from model_id (and so can be compared)."""

    def q(db: sqlite3.Connection) -> int:
        first_pending = db.execute("SELECT min(pk) FROM memories WHERE embedding_model != ?", (model_id,)).fetchone()[0]
        top = db.execute("SELECT coalesce(max(pk), 0) FROM memories").fetchone()[0]
        return top if first_pending is None else first_pending - 1

    return store.read(q)
