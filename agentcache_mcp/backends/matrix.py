"""In-memory vectors: one normalised float16 matrix per namespace, brute-force cosine top-k.

Derived from the store (which keeps float32): loaded from its vectors at start and kept current through its
change log (SQLite: the `changes` table; PostgreSQL: `vector_changes`, backends/postgres/matrix.py). A
brute-force scan never misses a memory, unlike an approximate index. The copy is
float16: half the memory (75 MB for 100k x 384 instead of 150), and the scan, which is memory-bound, reads
half the bytes. torch's float16 matrix-vector product (torch is loaded with the model anyway) accumulates
in float32: at 100k it took 5.9 ms against numpy's float32 19 ms (bench/RESULTS.md); the cosines differ
from float32 ones by at most ~3e-4, far below any gap the fusion acts on. Without torch, numpy computes in
float32, block by block.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..memory.ports import Vector

STORED = np.float16
Stored = npt.NDArray[np.float16]
"""The dtype of the in-memory copy (see the module docstring)."""
_BLOCK_ROWS = 8192


@dataclass
class _Block:
    """The vectors of one namespace: rows [0, size) of matrix are live; position[pk] finds a row."""

    dim: int
    matrix: Stored = field(init=False)
    pks: npt.NDArray[np.int64] = field(init=False)
    size: int = 0
    position: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((16, self.dim), dtype=STORED)
        self.pks = np.zeros(16, dtype=np.int64)

    def upsert(self, pk: int, vector: Vector) -> None:
        row = self.position.get(pk)
        if row is None:
            if self.size == len(self.pks):
                self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
                self.pks = np.concatenate([self.pks, np.zeros_like(self.pks)])
            row = self.size
            self.size += 1
            self.position[pk] = row
            self.pks[row] = pk
        self.matrix[row] = vector

    def extend(self, pks: npt.NDArray[np.int64], vectors: Vector) -> None:
        """Append rows for pks not yet in the block (a bulk load)."""
        needed = self.size + len(pks)
        if needed > len(self.pks):
            capacity = max(needed, 2 * len(self.pks))
            matrix = np.zeros((capacity, self.dim), dtype=STORED)
            matrix[: self.size] = self.matrix[: self.size]
            ids = np.zeros(capacity, dtype=np.int64)
            ids[: self.size] = self.pks[: self.size]
            self.matrix, self.pks = matrix, ids
        self.matrix[self.size : needed] = vectors
        self.pks[self.size : needed] = pks
        self.position.update(zip(pks.tolist(), range(self.size, needed), strict=True))
        self.size = needed

    def remove(self, pk: int) -> None:
        row = self.position.pop(pk, None)
        if row is None:
            return
        last = self.size - 1
        if row != last:  # move the last row into the hole
            moved = int(self.pks[last])
            self.matrix[row] = self.matrix[last]
            self.pks[row] = moved
            self.position[moved] = row
        self.size = last


class VectorMatrix:
    def __init__(self, dim: int):
        self.dim = dim
        self._blocks: dict[str, _Block] = {}
        self._namespace_of: dict[int, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._namespace_of)

    def __contains__(self, pk: int) -> bool:
        return pk in self._namespace_of

    def upsert(self, pk: int, namespace: str, vector: Vector) -> None:
        with self._lock:
            self._upsert_locked(pk, namespace, vector)

    def _upsert_locked(self, pk: int, namespace: str, vector: Vector) -> None:
        vector = _normalised(vector, self.dim)
        old = self._namespace_of.get(pk)
        if old is not None and old != namespace:
            self._blocks[old].remove(pk)
        self._block(namespace).upsert(pk, vector)
        self._namespace_of[pk] = namespace

    def _block(self, namespace: str) -> _Block:
        block = self._blocks.get(namespace)
        if block is None:
            block = self._blocks[namespace] = _Block(self.dim)
        return block

    def add_batch(self, rows: list[tuple[int, str, bytes]]) -> None:
        """Add (pk, namespace, float32 blob) rows in bulk: loading 100k vectors one by one holds the GIL
        long enough to delay the server's first answers."""
        if not rows:
            return
        matrix = np.frombuffer(b"".join(blob for _, _, blob in rows), dtype="<f4").astype(np.float32)
        matrix = matrix.reshape(len(rows), self.dim)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        by_namespace: dict[str, list[int]] = {}
        for i, (_, namespace, _) in enumerate(rows):
            by_namespace.setdefault(namespace, []).append(i)
        with self._lock:
            for namespace, indices in by_namespace.items():
                pks = np.array([rows[i][0] for i in indices], dtype=np.int64)
                if any(int(pk) in self._namespace_of for pk in pks):
                    for i in indices:  # rare: a reload over rows we hold already
                        self._upsert_locked(rows[i][0], namespace, matrix[i])
                    continue
                self._block(namespace).extend(pks, matrix[indices])
                self._namespace_of.update(dict.fromkeys(pks.tolist(), namespace))

    def remove(self, pk: int) -> None:
        with self._lock:
            namespace = self._namespace_of.pop(pk, None)
            if namespace is not None:
                self._blocks[namespace].remove(pk)

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._namespace_of.clear()

    def vectors(self, namespace: str) -> tuple[npt.NDArray[np.int64], Vector]:
        """A copy of (pks, matrix) for one namespace."""
        with self._lock:
            block = self._blocks.get(namespace)
            if block is None:
                return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
            return block.pks[: block.size].copy(), block.matrix[: block.size].astype(np.float32)

    def search(self, namespace: str, query: Vector, k: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """Top-k (pk, cosine) in namespace, best first; restricted to `allowed` pks when given."""
        query = _normalised(query, self.dim)
        with self._lock:
            block = self._blocks.get(namespace)
            if block is None or block.size == 0:
                return []
            scores = _cosines(block.matrix[: block.size], query)
            pks = block.pks[: block.size]
            if allowed is not None:
                mask = np.fromiter((int(p) in allowed for p in pks), dtype=bool, count=len(pks))
                scores = np.where(mask, scores, -np.inf)
            top = _top_k(scores, min(k, len(scores)))
            return [(int(pks[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]

    def scores_for(self, namespace: str, query: Vector, pks: list[int]) -> dict[int, float]:
        """Exact cosine of the query with each given memory that has a vector in namespace."""
        query = _normalised(query, self.dim)
        with self._lock:
            block = self._blocks.get(namespace)
            if block is None:
                return {}
            rows = [(pk, block.position[pk]) for pk in pks if pk in block.position]
            if not rows:
                return {}
            sims = block.matrix[[r for _, r in rows]].astype(np.float32) @ query
            return {pk: float(s) for (pk, _), s in zip(rows, sims, strict=True)}


def _cosines(matrix: npt.NDArray[np.float16], query: Vector) -> Vector:
    """matrix @ query in float32 from the float16 rows."""
    torch = _torch()
    if torch is not None:
        product = torch.mv(torch.from_numpy(matrix), torch.from_numpy(query.astype(np.float16)))
        return product.float().numpy()
    out = np.empty(len(matrix), dtype=np.float32)
    for start in range(0, len(matrix), _BLOCK_ROWS):
        out[start : start + _BLOCK_ROWS] = matrix[start : start + _BLOCK_ROWS].astype(np.float32) @ query
    return out


def _top_k(scores: Vector, k: int) -> npt.NDArray[np.int64]:
    """Positions of the k best scores, best first, equal scores in position order (which of several equal
    scores at the cut-off makes it is unspecified, as with any partial selection)."""
    torch = _torch()
    scores = np.nan_to_num(scores, nan=-np.inf)  # a corrupt vector's NaN ranks last, with either path
    if k < len(scores):
        if torch is not None:  # a partial selection in torch: ~0.2 ms at 100k rows against ~1.2 ms in numpy
            top = torch.topk(torch.from_numpy(scores), k, sorted=False).indices.numpy()
        else:
            top = np.argpartition(-scores, k - 1)[:k]
    else:
        top = np.arange(len(scores))
    return top[np.lexsort((top, -scores[top]))]


_torch_module: object = None


def _torch() -> Any:
    """torch if it can be imported (it comes with sentence-transformers), else None; imported once."""
    global _torch_module
    if _torch_module is None:
        try:
            import torch

            _torch_module = torch
        except ImportError:
            _torch_module = False
    return _torch_module or None


def _normalised(vector: Vector, dim: int) -> Vector:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.shape[0] != dim:
        raise ValueError(f"vector has {v.shape[0]} dimensions, the index {dim}")
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
