"""A model other than the bundled one is loaded from this machine only, never downloaded: the product works
offline. A directory, or a Hugging Face name already in the local Hugging Face cache, loads with the network
cut; a name that is not on this machine is refused at once, with what to do, without a connection attempt."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentcache_mcp import app, cli
from agentcache_mcp.config import ENV_VARIABLES
from agentcache_mcp.embeddings import EmbeddingModelError, SentenceTransformerEmbedder, bundled_model_dir

from conftest import HashEmbedder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Any]]:
    """Every name lookup and connection is refused and recorded; the Hugging Face cache is an empty folder."""
    import huggingface_hub.constants

    attempts: list[Any] = []

    def getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[:2])
        raise socket.gaierror(socket.EAI_NONAME, "the network is cut in this test")

    def connect(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("the network is cut in this test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    yield attempts


@pytest.mark.parametrize("name", ["acme/not-on-this-machine", "all-mpnet-base-v2"])
def test_a_model_name_not_on_this_machine_is_refused_without_a_connection_attempt(
    no_network: list[Any], name: str
) -> None:
    embedder = SentenceTransformerEmbedder(name)
    with pytest.raises(EmbeddingModelError) as caught:
        embedder.load()
    assert no_network == []  # not even a DNS lookup
    message = str(caught.value)
    assert "not on this machine" in message and "never downloads" in message and "hf download" in message


def test_reembed_with_a_hub_name_says_plainly_that_it_does_not_download(
    no_network: list[Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agentcache_mcp.app import open_memory
    from agentcache_mcp.config import Settings

    for variable in ENV_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    db = tmp_path / "m.db"
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    memory.remember("a note to embed with another model")
    memory.close()
    monkeypatch.setattr(app, "SentenceTransformerEmbedder", SentenceTransformerEmbedder)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--db", str(db), "reembed", "--model", "sentence-transformers/all-mpnet-base-v2"])
    out, err = capsys.readouterr()
    assert exited.value.code == 1 and out == "" and no_network == []
    assert "never downloads a model" in err and len(err.splitlines()) == 1


@pytest.mark.model
@pytest.mark.slow
def test_a_model_in_the_hugging_face_cache_loads_with_the_network_cut(no_network: list[Any]) -> None:
    import huggingface_hub.constants

    # the bundled model's files, laid out as a download of "acme/minilm" in the (empty) cache would be
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--acme--minilm"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(bundled_model_dir(), target_is_directory=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    embedder = SentenceTransformerEmbedder("acme/minilm")
    embedder.load()
    assert embedder.embed(["hello"]).shape == (1, 384)
    assert no_network == []
