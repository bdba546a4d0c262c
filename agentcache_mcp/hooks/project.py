"""Which namespace a coding session's memories belong to: the project's, derived from where the session runs.

Read without running git (a hook must start fast): the repository is found by walking up from the session's
folder to a `.git` directory (or a worktree's `.git` file naming one), and its `origin` remote read from the
config file (regular files of at most 1 MiB only: a FIFO or a link to /dev/zero in an unpacked archive is passed
over, not waited on or read without end). The same repository cloned twice, or opened from a worktree, maps to the same namespace:

    git@github.com:acme/widgets.git, https://github.com/acme/widgets  ->  git:github.com:acme:widgets

A folder without a remote gets `dir:<name>-<8 hex digits of its absolute path's SHA-256>` (two folders with one
name stay apart). `AGENTCACHE_PROJECT_NAMESPACE` overrides both; it must be a valid namespace.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import re
import stat
from pathlib import Path

ENV_VAR = "AGENTCACHE_PROJECT_NAMESPACE"
MAX_CHARS = 128
"""The store's namespace limit (memory.validation.MAX_NAMESPACE_CHARS; not imported: it pulls in pydantic)."""
_VALID = re.compile(r"[^\W][\w.:@+-]*")
_UNSAFE = re.compile(r"[^\w.@+-]+")


class ProjectNamespaceError(ValueError):
    """AGENTCACHE_PROJECT_NAMESPACE is set to something that is not a namespace."""


def project_namespace(cwd: str | os.PathLike[str], environ: dict[str, str] | None = None) -> str:
    """The namespace for a session in `cwd` (see the module docstring)."""
    env = os.environ if environ is None else environ
    chosen = env.get(ENV_VAR, "").strip()
    if chosen:
        if len(chosen) > MAX_CHARS or ".." in chosen or not _VALID.fullmatch(chosen):
            raise ProjectNamespaceError(
                f"{ENV_VAR}={chosen!r} is not a namespace: use letters, digits and . _ - : @ +, starting with a "
                f"letter or digit, at most {MAX_CHARS} characters"
            )
        return chosen
    folder = Path(cwd).expanduser().resolve()
    git_dir, top = _find_git_dir(folder)
    if git_dir is not None:
        remote = _origin_url(git_dir)
        if remote:
            namespace = _from_remote(remote)
            if namespace:
                return namespace
        folder = top
    return _from_folder(folder)


MAX_GIT_FILE_BYTES = 1024 * 1024
"""A `.git` file, `commondir` or `config` larger than this is not read (git's own are a few KB)."""


def _read_small(path: Path) -> str | None:
    """The text of a regular file of at most MAX_GIT_FILE_BYTES; None for anything else. An unpacked archive may
    hold a FIFO (which would block the hook forever) or a link to /dev/zero (endless) where git keeps a file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = f.read(MAX_GIT_FILE_BYTES + 1)
        except OSError:
            return None
    if len(data) > MAX_GIT_FILE_BYTES:
        return None
    return data.decode("utf-8", errors="replace")


def _find_git_dir(folder: Path) -> tuple[Path | None, Path]:
    """The repository's git directory (the common one for a worktree) and its top folder; (None, folder)."""
    for candidate in (folder, *folder.parents):
        dot_git = candidate / ".git"
        if dot_git.is_dir():
            return dot_git, candidate
        if dot_git.is_file():
            text = _read_small(dot_git)
            if text is None:
                return None, folder
            line = text.strip()
            if line.startswith("gitdir:"):
                target = (candidate / line[len("gitdir:") :].strip()).resolve()
                common = _read_small(target / "commondir")  # a worktree's git dir points at the main one
                if common is not None:
                    with contextlib.suppress(OSError):
                        target = (target / common.strip()).resolve()
                return target, candidate
    return None, folder


def _origin_url(git_dir: Path) -> str | None:
    """The URL of the `origin` remote, else of the first remote; None if the config has none or is unreadable."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    text = _read_small(git_dir / "config")
    if text is None:
        return None
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    remotes = [s for s in parser.sections() if s.startswith('remote "') and parser.has_option(s, "url")]
    remotes.sort(key=lambda s: s != 'remote "origin"')
    return parser.get(remotes[0], "url").strip() if remotes else None


def _from_remote(url: str) -> str | None:
    """git:<host>:<path parts> from an ssh, scp-like, https or file URL; credentials and port dropped."""
    url = url.strip()
    match = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^@/]*@)?([^/:]+)(?::\d+)?/(.*)$", url)
    if match:
        host, path = match.groups()
    else:
        scp = re.match(r"^(?:[^@/]+@)?([^/:]+):(?!//)(.*)$", url)  # git@github.com:acme/widgets.git
        if scp:
            host, path = scp.groups()
        else:  # a local path used as a remote
            host, path = "local", url
    path = re.sub(r"\.git/?$", "", path.strip("/"))
    parts = [p for p in (_UNSAFE.sub("-", part).strip("-") for part in [host.lower(), *path.split("/")]) if p]
    if len(parts) < 2:
        return None
    return _fit("git:" + ":".join(parts))


def _from_folder(folder: Path) -> str:
    digest = hashlib.sha256(str(folder).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    name = _UNSAFE.sub("-", folder.name).strip("-.") or "root"
    return _fit(f"dir:{name}-{digest}")


def _fit(namespace: str) -> str:
    """At most MAX_CHARS: a longer one keeps its start and ends with a hash of the whole."""
    if len(namespace) <= MAX_CHARS:
        return namespace
    digest = hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:12]
    return f"{namespace[: MAX_CHARS - 13]}-{digest}"
