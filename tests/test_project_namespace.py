"""The project namespace a hook picks: from the git remote (any URL form, worktrees), else the folder."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from agentcache_mcp.hooks.project import ENV_VAR, ProjectNamespaceError, project_namespace
from agentcache_mcp.memory.validation import validate_namespace


def _repo(root: Path, url: str | None) -> Path:
    (root / ".git").mkdir(parents=True)
    config = "[core]\n\tbare = false\n"
    if url is not None:
        config += f'[remote "upstream"]\n\turl = /elsewhere/fork.git\n[remote "origin"]\n\turl = {url}\n'
    (root / ".git" / "config").write_text(config)
    return root


@pytest.mark.parametrize(
    "url",
    [
        "git@github.com:acme/widgets.git",
        "https://github.com/acme/widgets",
        "https://user:secret-token@github.com/acme/widgets.git",
        "ssh://git@github.com:22/acme/widgets.git",
        "https://GitHub.com/acme/widgets/",
    ],
)
def test_every_form_of_one_remote_is_one_namespace(tmp_path: Path, url: str) -> None:
    repo = _repo(tmp_path / "clone", url)
    (repo / "src" / "deep").mkdir(parents=True)
    assert project_namespace(repo / "src" / "deep", environ={}) == "git:github.com:acme:widgets"
    assert "secret" not in project_namespace(repo, environ={})


def test_a_worktree_maps_to_its_repository(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "main", "git@example.org:team/app.git")
    worktree_git = repo / ".git" / "worktrees" / "feature"
    worktree_git.mkdir(parents=True)
    (worktree_git / "commondir").write_text("../..\n")
    wt = tmp_path / "wt-feature"
    wt.mkdir()
    (wt / ".git").write_text(f"gitdir: {worktree_git}\n")
    assert project_namespace(wt, environ={}) == "git:example.org:team:app"


def test_without_a_remote_the_folder_names_it_and_two_namesakes_differ(tmp_path: Path) -> None:
    a = _repo(tmp_path / "a" / "proj", None)
    b = tmp_path / "b" / "proj"
    b.mkdir(parents=True)
    na, nb = project_namespace(a / ".git" / "..", environ={}), project_namespace(b, environ={})
    assert na.startswith("dir:proj-") and nb.startswith("dir:proj-") and na != nb
    assert project_namespace(a, environ={}) == na  # stable


def test_every_derived_namespace_is_valid_for_the_store(tmp_path: Path) -> None:
    odd = tmp_path / "my project (copy) ünï"
    odd.mkdir()
    long = _repo(tmp_path / "long", "https://host.example/" + "/".join(["segment-" * 4] * 12) + ".git")
    for ns in (
        project_namespace(odd, environ={}),
        project_namespace(long, environ={}),
        project_namespace("/", environ={}),
    ):
        assert validate_namespace(ns) == ns


def test_the_environment_overrides_and_is_checked(tmp_path: Path) -> None:
    assert project_namespace(tmp_path, environ={ENV_VAR: "team-notes"}) == "team-notes"
    with pytest.raises(ProjectNamespaceError, match=ENV_VAR):
        project_namespace(tmp_path, environ={ENV_VAR: "../etc"})


def _in_time(target: object, seconds: float = 20.0) -> tuple[bool, list[object]]:
    """Run `target()` in a daemon thread; whether it returned within `seconds`, and what it returned."""
    import threading

    out: list[object] = []
    worker = threading.Thread(target=lambda: out.append(target()), daemon=True)  # type: ignore[operator]
    worker.start()
    worker.join(seconds)
    return not worker.is_alive(), out


@pytest.mark.parametrize("where", [".git/config", ".git"])
def test_a_fifo_where_git_keeps_its_config_does_not_hang_the_hook(tmp_path: Path, where: str) -> None:
    """An unpacked archive can hold a FIFO (or a link to /dev/zero) where a repository's files should be: the
    hook must fall back to the folder's namespace, not wait forever for a writer (or read without end)."""
    import os

    root = tmp_path / "unpacked"
    (root / ".git").mkdir(parents=True) if where == ".git/config" else root.mkdir()
    fifo = root / where
    os.mkfifo(fifo)
    try:
        done, out = _in_time(lambda: project_namespace(root))
        assert done, "project_namespace blocked on a FIFO"
        assert str(out[0]).startswith("dir:unpacked-")
    finally:
        with contextlib.suppress(OSError):  # releases a reader still blocked in open()
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_git_config_linked_to_an_endless_device_is_not_read_without_end(tmp_path: Path) -> None:
    root = tmp_path / "unpacked"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "config").symlink_to("/dev/zero")
    done, out = _in_time(lambda: project_namespace(root))
    assert done and str(out[0]).startswith("dir:unpacked-")
