"""`agentcache-mcp hooks install|uninstall claude-code`: add agentcache's hooks to a Claude Code settings file,
or take them out, without touching anything else in it.

Where Claude Code reads hooks (https://code.claude.com/docs/en/settings, .../hooks): `~/.claude/settings.json`
(every project; `$CLAUDE_CONFIG_DIR/settings.json` when that is set), `<project>/.claude/settings.json` (shared,
committed) and `<project>/.claude/settings.local.json` (yours, not committed). The shape:

    {"hooks": {"SessionStart": [{"matcher": "", "hooks": [{"type": "command", "command": "...", "timeout": 10}]}]}}

An empty matcher matches every source (SessionStart: startup, resume, clear, compact; PreCompact: manual,
auto). The events installed, and why Stop is not by default, are in EVENTS and DEFAULT_EVENTS.

Safety, in the order it happens:
- the file is parsed whole first; anything but a JSON object (with `hooks` an object of lists, no key twice)
  is refused in one line and nothing is written;
- our entries are recognised by their command (`agentcache-mcp ... hook session-start|ingest`, or
  `python -m agentcache_mcp ... hook ...`), so a second install updates them in place (options the user added
  after the event, `--max-chars 1000`, are kept) and a changed install path replaces the old one, never a
  duplicate; every other hook, setting and key order is kept (indentation too, as detected);
- a shell command the user wrote around ours (`cd x; agentcache-mcp hook ... > f`, `... && notify-send`) counts as
  our hook for its event but is never edited nor removed, only named in a note: rewritten word by word, its
  operators would be quoted into arguments, and removing it would delete the user's other commands;
- nothing changed, nothing written (no backup, no reformatting);
- `--dry-run` prints the change as a diff, the lines around it passed through secrets.redact (a settings file's
  "env" block often holds API keys, and a dry run's output gets pasted into issues);
- otherwise the previous file is copied to `settings.json.agentcache-backup` (one backup, replaced at each
  change: the file as it was before the last change we made), then the new text goes to a temporary file
  beside it, is fsynced and renamed over the file (same permissions). Just before the rename the file is read
  again: if something else (Claude Code itself) changed it meanwhile, nothing is replaced and the error says
  to run again. A symbolic link (a dotfiles repository) is followed: the file it points to is replaced, the
  link stays.

The command path must outlive upgrades: see choose_launcher.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import json
import os
import re
import shlex
import shutil
import stat
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

HOST = "claude-code"
SCOPES = ("user", "project", "local")
EVENTS = {
    "SessionStart": "session-start",  # prints the project's memories, which Claude Code adds to the context
    "SessionEnd": "ingest",  # the session's durable facts, when it ends (exit, /clear, logout)
    "PreCompact": "ingest",  # the same before a compaction summarises the transcript away
    "Stop": "ingest",  # after every reply: opt-in only (see DEFAULT_EVENTS)
}
"""Claude Code's hook events we can install, and the `agentcache-mcp hook` event each runs."""
DEFAULT_EVENTS = ("SessionStart", "SessionEnd", "PreCompact")
"""Stop is left out by default: it runs after every reply, so it would re-read the whole transcript at each turn
(the ingest is idempotent, so it stores nothing twice, but it spends that time after every answer), and what it
would catch SessionEnd and PreCompact catch anyway, unless the session is killed."""
TIMEOUTS = {"SessionStart": 10, "SessionEnd": 30, "PreCompact": 30, "Stop": 30}
"""Seconds before Claude Code cancels the hook. SessionEnd hooks share a 1.5 s budget unless a hook sets a
timeout (Claude Code's hooks reference; github.com/Digital-Process-Tools/claude-remember/issues/560), which an
ingest that opens the store can exceed. A session start takes ~0.1 s (bench/RESULTS.md); 10 s caps a stuck store."""
SCRIPT = "agentcache-mcp"
MODULE = "agentcache_mcp"
BACKUP_SUFFIX = ".agentcache-backup"
EXIT_FAILED = 1
EXIT_USAGE = 2


class InstallError(Exception):
    """Ends the command with one line on stderr and this exit code; nothing was written."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


# where


def settings_path(scope: str, project_dir: Path, environ: dict[str, str] | None = None) -> Path:
    """The settings file Claude Code reads for `scope` (see the module docstring)."""
    env = os.environ if environ is None else environ
    if scope == "user":
        config_dir = env.get("CLAUDE_CONFIG_DIR")
        return (Path(config_dir).expanduser() if config_dir else Path.home() / ".claude") / "settings.json"
    name = "settings.json" if scope == "project" else "settings.local.json"
    return project_dir / ".claude" / name


# which command


@dataclass(frozen=True)
class Launcher:
    """How the hook starts agentcache-mcp (argv before `hook`), and why that was chosen."""

    argv: tuple[str, ...]
    reason: str


_CACHE_PARTS = re.compile(r"^(\.cache|caches?|archive-v\d+|builds-v\d+|environments-v\d+|pip-[\w-]+|site-packages)$", re.I)
_VERSION_PART = re.compile(r"(^|[-_])v?\d+\.\d+\.\d+")


def unstable_reason(path: str) -> str | None:
    """Why `path` may vanish at an upgrade or a cache clean (a cache folder, a versioned folder), else None.
    The path is judged as written, links not followed: `/opt/homebrew/bin/agentcache-mcp` is stable even though
    it points into `Cellar/agentcache-mcp/1.2.3/`."""
    for part in PureWindowsPath(path).parts if "\\" in path else PurePath(path).parts:
        if _CACHE_PARTS.match(part):
            return f"it lies in {part!r}, a cache or package folder that an upgrade or a cache clean removes"
        if _VERSION_PART.search(part):
            return f"it lies in {part!r}, a folder named for one version, which an upgrade replaces"
    return None


def _script_names(windows: bool) -> tuple[str, ...]:
    return (SCRIPT + ".exe", SCRIPT) if windows else (SCRIPT,)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def choose_launcher(
    *,
    path_env: str | None,
    scripts_dirs: Sequence[Path],
    executable: Path,
    windows: bool = os.name == "nt",
) -> Launcher:
    """The command that starts this installation, by a path that survives upgrades.

    1. `agentcache-mcp` as found on PATH, if it is this installation's script (the same file as the script in
       one of `scripts_dirs`, the running interpreter's script folders): written as found, not resolved, so a
       stable link (`~/.local/bin/agentcache-mcp` of pipx or uv) stays the path.
    2. Else this installation's script by its absolute path (another `agentcache-mcp` on PATH is not ours).
    3. Else `<python> -m agentcache_mcp` with the running interpreter (a virtualenv's `bin/python`, unresolved).
    Whichever is chosen, a path in a cache or a version-named folder is refused (uvx's, pip's): the hook would
    break when that cache is cleaned."""
    ours = [d / name for d in scripts_dirs for name in _script_names(windows) if (d / name).is_file()]
    found = shutil.which(SCRIPT, path=path_env) if path_env is not None else None
    chosen: Launcher
    if found and any(_same_file(Path(found), script) for script in ours):
        path = os.path.abspath(found)
        chosen = Launcher((path,), f"`{SCRIPT}` on PATH is this installation ({path})")
    elif ours:
        path = os.path.abspath(ours[0])
        why = f"`{SCRIPT}` on PATH is another installation ({found})" if found else f"`{SCRIPT}` is not on PATH"
        chosen = Launcher((path,), f"{why}; this installation's script is {path}")
    else:
        python = os.path.abspath(executable)
        chosen = Launcher((python, "-m", MODULE), f"no `{SCRIPT}` script found for this installation; its Python is {python}")
    if (unstable := unstable_reason(chosen.argv[0])) is not None:
        raise InstallError(
            f"this agentcache-mcp runs from {chosen.argv[0]}, and {unstable}: the hooks would stop working. Install it "
            "to stay (pipx install, uv tool install, or a virtualenv; see README, Install) and run this command from "
            "that installation"
        )
    return chosen


def this_installation(environ: dict[str, str] | None = None) -> Launcher:
    """choose_launcher for the running interpreter."""
    env = os.environ if environ is None else environ
    dirs = [Path(sysconfig.get_path("scripts"))]
    with contextlib.suppress(KeyError):
        user = Path(sysconfig.get_path("scripts", f"{os.name}_user"))
        if user not in dirs and _installed_for(user, sys.executable):
            dirs.append(user)
    return choose_launcher(path_env=env.get("PATH"), scripts_dirs=dirs, executable=Path(sys.executable))


def _installed_for(scripts_dir: Path, python: str) -> bool:
    """A `pip install --user` script folder is shared by every Python: ours only if the script names our Python."""
    try:
        with open(scripts_dir / SCRIPT, "rb") as script:
            first = script.readline(4096)
    except OSError:
        return False
    return first.startswith(b"#!") and first[2:].strip().split(b" ")[0] == os.fsencode(python)


# which entries are ours


@dataclass(frozen=True)
class _OurCommand:
    env: list[str]  # the words before the launcher (`NAME=value`, `timeout 5`, `nice -n 10`): kept
    options: list[str]  # between the launcher and `hook` (`--db PATH`): kept
    event: str
    extras: list[str]  # after the event (`--max-chars 1000`): kept
    compound: bool = False  # a shell command the user wrote around ours (`cd x; ... > f`, `... && notify`): not edited


def _is_compound(command: str) -> bool:
    """Whether the shell would run more than one plain command: an operator (`;` `&&` `|` `>` `(`) outside quotes, a
    command substitution, or a line break. shlex.split would take the operators for words, and writing them back
    quoted would break the user's command."""
    if "`" in command or "$(" in command or "\n" in command:
        return True
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return any(token and all(c in "();<>|&" for c in token) for token in lexer)
    except ValueError:
        return True




def parse_our_command(command: Any) -> _OurCommand | None:
    """The parts of an agentcache hook command, or None if `command` is someone else's."""
    if not isinstance(command, str):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if PureWindowsPath(word).name.lower() in (SCRIPT, SCRIPT + ".exe"):
            start, end = i, i + 1
        elif word == "-m" and i >= 1 and words[i + 1 : i + 2] == [MODULE]:
            start, end = i - 1, i + 2
        else:
            continue
        rest = words[end:]
        if "hook" not in rest:
            return None
        at = rest.index("hook")
        if rest[at + 1 : at + 2] not in (["session-start"], ["ingest"]):
            return None
        env = words[:start]  # the user's prefix, kept whole: `VAR=value`, `timeout 5`, `nice -n 10`, `env -u X`
        return _OurCommand(
            env=env, options=rest[:at], event=rest[at + 1], extras=rest[at + 2 :], compound=_is_compound(command)
        )
    return None


def _without_db(words: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--db":
            skip = True
        elif not word.startswith("--db="):
            out.append(word)
    return out


def _command_for(event: str, launcher: Launcher, db: str | None, old: _OurCommand | None) -> list[str]:
    env, options, extras = (old.env, old.options, old.extras) if old is not None else ([], [], [])
    if db is not None:
        options, extras = _without_db(options), [*_without_db(extras), "--db", db]
    return [*env, *launcher.argv, *options, "hook", EVENTS[event], *extras]


# the edit


class _Settings:
    """A parsed settings file: its object, and how it was written (to write it back the same way)."""

    def __init__(self, path: Path, raw: bytes | None):
        self.path = path
        self.raw = raw
        text = _decoded(path, raw)
        self.indent: int | str = _indentation(text)
        self.final_newline = text.endswith("\n") or not text.strip()
        self.data = _parsed(path, text)

    @property
    def text(self) -> str:
        return _decoded(self.path, self.raw)

    def render(self, data: dict[str, Any]) -> str:
        text = json.dumps(data, indent=self.indent, ensure_ascii=False)
        return text + "\n" if self.final_newline else text


def _decoded(path: Path, raw: bytes | None) -> str:
    if raw is None:
        return ""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InstallError(f"{path} is not UTF-8 text (byte {exc.start}): fix or move it; nothing was written") from None


def _indentation(text: str) -> int | str:
    found = re.search(r"\n([ \t]+)\S", text)
    if found is None:
        return 2
    return "\t" if found.group(1).startswith("\t") else len(found.group(1))


def _no_key_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _parsed(path: Path, text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    where = f"{path} is not valid JSON"
    try:
        data = json.loads(text, object_pairs_hook=_no_key_twice)
    except json.JSONDecodeError as exc:
        raise InstallError(f"{where} (line {exc.lineno}, column {exc.colno}: {exc.msg}): fix it; nothing was written") from None
    except ValueError as exc:
        raise InstallError(f"{where} for Claude Code: {exc}; fix it, nothing was written") from None
    if not isinstance(data, dict):
        raise InstallError(f"{path} holds JSON {type(data).__name__}, not an object: fix it; nothing was written")
    hooks = data.get("hooks")
    if hooks is not None and not isinstance(hooks, dict):
        raise InstallError(f"{path}: \"hooks\" is not an object: fix it; nothing was written")
    for event, groups in (hooks or {}).items():
        if not isinstance(groups, list):
            raise InstallError(f"{path}: \"hooks\".{event!r} is not a list: fix it; nothing was written")
    return data


def _our_hooks(groups: list[Any]) -> list[tuple[dict[str, Any], dict[str, Any], _OurCommand]]:
    """(group, hook, parsed command) of every agentcache hook in one event's groups."""
    found = []
    for group in groups:
        if isinstance(group, dict) and isinstance(group.get("hooks"), list):
            for hook in group["hooks"]:
                if isinstance(hook, dict) and (ours := parse_our_command(hook.get("command"))) is not None:
                    found.append((group, hook, ours))
    return found


def _remove(hooks: dict[str, Any], event: str, doomed: list[dict[str, Any]]) -> None:
    """Take `doomed` hooks out of an event, then the containers that emptied because of it."""
    groups = hooks[event]
    for group in list(groups):
        if isinstance(group, dict) and isinstance(group.get("hooks"), list):
            before = len(group["hooks"])
            group["hooks"] = [h for h in group["hooks"] if not any(h is d for d in doomed)]
            if before and not group["hooks"]:
                groups.remove(group)
    if not groups:
        del hooks[event]


def plan_install(
    data: dict[str, Any], launcher: Launcher, events: Sequence[str], db: str | None
) -> tuple[dict[str, Any], list[str]]:
    """The settings with exactly our hooks for `events` (and none for the others), and what changed."""
    new = copy.deepcopy(data)
    notes: list[str] = []
    created_hooks = "hooks" not in new
    hooks: dict[str, Any] = new.setdefault("hooks", {})
    for event in EVENTS:
        found = _our_hooks(hooks.get(event, []))
        ours = [o for o in found if not o[2].compound]
        written = [hook for _, hook, parsed in found if parsed.compound]
        if event not in events:
            if ours:
                _remove(hooks, event, [hook for _, hook, _ in ours])
                notes.append(f"{event}: removed")
            notes.extend(_left_by_hand(event, written))
            continue
        if written and not ours:
            notes.extend(f"{event}: kept as written `{hook['command']}` (a shell command around agentcache's)" for hook in written)
            continue
        if not ours:
            command = shlex.join(_command_for(event, launcher, db, None))
            group = {"matcher": "", "hooks": [{"type": "command", "command": command, "timeout": TIMEOUTS[event]}]}
            hooks.setdefault(event, []).append(group)
            notes.append(f"{event}: added `{command}`")
            continue
        _, hook, parsed = ours[0]
        if len(ours) > 1:
            _remove(hooks, event, [h for _, h, _ in ours[1:]])
            notes.append(f"{event}: removed {len(ours) - 1} duplicate agentcache hook(s)")
        wanted = _command_for(event, launcher, db, parsed)
        if shlex.split(hook["command"]) != wanted:
            old, hook["command"] = hook["command"], shlex.join(wanted)
            notes.append(f"{event}: updated `{old}` -> `{hook['command']}`")
        if hook.get("type") != "command":
            hook["type"] = "command"
        if "timeout" not in hook:
            hook["timeout"] = TIMEOUTS[event]
            notes.append(f"{event}: timeout {TIMEOUTS[event]} s added")
    if created_hooks and not hooks:
        del new["hooks"]
    return new, notes


def plan_uninstall(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The settings without any agentcache hook (and without the containers that held only ours)."""
    new = copy.deepcopy(data)
    notes: list[str] = []
    hooks = new.get("hooks")
    if not isinstance(hooks, dict):
        return new, notes
    removed = False
    for event in list(hooks):
        found = _our_hooks(hooks[event])
        ours = [hook for _, hook, parsed in found if not parsed.compound]
        if ours:
            _remove(hooks, event, ours)
            notes.append(f"{event}: removed {len(ours)} agentcache hook(s)")
            removed = True
        notes.extend(_left_by_hand(event, [hook for _, hook, parsed in found if parsed.compound]))
    if removed and not hooks:
        del new["hooks"]
    return new, notes


def _left_by_hand(event: str, hooks: list[dict[str, Any]]) -> list[str]:
    return [
        f"{event}: left `{hook['command']}`: it runs other commands too; take agentcache out of it by hand" for hook in hooks
    ]


# the write


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise InstallError(f"{path} is a directory, not a settings file; nothing was written") from None


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, content: bytes, mode: int, *, unchanged_since: bytes | bool | None = False) -> None:
    """Write `content` to a temporary file beside `path`, fsync it, give it `mode` and rename it over `path`.
    With `unchanged_since` (the bytes read earlier, None for a file that did not exist), `path` is read again
    just before the rename and nothing is replaced if it changed. A failure leaves `path` as it was and no
    temporary file behind."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        if unchanged_since is not False and _read(path) != unchanged_since:
            raise InstallError(f"{path} was changed by another program while this one ran: nothing was replaced; run again")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself, durable (not possible on every system)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def write_settings(path: Path, settings: _Settings, text: str) -> Path | None:
    """Back up and replace the settings file (module docstring); the backup's path, None if there was no file."""
    target = Path(os.path.realpath(path))
    backup = None
    if settings.raw is not None:
        mode = stat.S_IMODE(target.stat().st_mode)
        backup = path.with_name(path.name + BACKUP_SUFFIX)
        _atomic_write(backup, settings.raw, mode)
    else:
        mode = _umask_mode()
        target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, text.encode("utf-8"), mode, unchanged_since=settings.raw)
    return backup


# the command


def add_parser(sub: Any, common_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """`hooks install|uninstall claude-code` under `sub` (cli.py's subcommands); `common_options` adds --db and
    --log-level as every subcommand has them."""
    hooks = sub.add_parser(
        "hooks",
        help="add agentcache's hooks to Claude Code's settings (memories at session start, capture at its end), "
        "or remove them",
        description="add agentcache's hooks to a Claude Code settings file, or remove them; every other setting "
        "is kept, and the previous file is kept as FILE" + BACKUP_SUFFIX,
    )
    actions = hooks.add_subparsers(dest="hooks_action", metavar="ACTION", required=True)
    for action, text in (("install", "add or update the hooks"), ("uninstall", "remove the hooks (only ours)")):
        parser = actions.add_parser(action, help=text, description=text)
        common_options(parser)
        for option in parser._actions:
            if "--db" in option.option_strings:
                option.help = (
                    "install: the store the hooks use, written into their commands (default: none written; the "
                    "hooks read $AGENTCACHE_DB as Claude Code's environment has it, else the default file)"
                    if action == "install"
                    else "not used by uninstall"
                )
        parser.add_argument("host", choices=[HOST], help="the coding agent (only claude-code for now)")
        parser.add_argument(
            "--scope",
            choices=SCOPES,
            default="user",
            help="user: ~/.claude/settings.json, every project (default); project: PROJECT/.claude/settings.json, "
            "shared with the project's repository; local: PROJECT/.claude/settings.local.json, this project, you only",
        )
        parser.add_argument(
            "--project-dir",
            default=None,
            metavar="DIR",
            help="the project for --scope project or local (default: the current directory)",
        )
        parser.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
        if action == "install":
            parser.add_argument(
                "--events",
                default=",".join(DEFAULT_EVENTS),
                metavar="LIST",
                help=f"comma-separated Claude Code events to hook, of {', '.join(EVENTS)} (default: "
                f"{','.join(DEFAULT_EVENTS)}; Stop, after every reply, is opt-in); ours on other events are removed",
            )


def _events(value: str) -> list[str]:
    chosen = [e.strip() for e in value.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in EVENTS]
    if unknown or not chosen:
        raise InstallError(
            f"--events {value!r}: {'unknown event ' + repr(unknown[0]) if unknown else 'no event'}; choose from "
            f"{', '.join(EVENTS)} (uninstall removes them all)",
            EXIT_USAGE,
        )
    return chosen


_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.I)


def _db(value: str | None) -> str | None:
    """--db as the hook command gets it: a file as an absolute path (the hook runs in the session's folder)."""
    if not value:
        return None
    if "://" in value:
        if _URL_PASSWORD.match(value) or re.search(r"[?&]password=", value, re.I):
            raise InstallError(
                "--db holds a password: the hook command is stored in plain text (a project's settings file is "
                "committed). Give the URL without it and put the password in ~/.pgpass or PGPASSWORD",
                EXIT_USAGE,
            )
        return value
    path = Path(value).expanduser().absolute()
    if not path.parent.is_dir():
        raise InstallError(f"--db {value!r}: the directory {path.parent} does not exist", EXIT_USAGE)
    return str(path)


def run(args: argparse.Namespace, out: Any = None) -> int:
    """`hooks install|uninstall`: 0 done (or nothing to do), 1 failed, 2 usage error; errors are one line."""
    from ..commands import print_error

    try:
        return _run(args, sys.stdout if out is None else out)
    except InstallError as exc:
        return print_error(str(exc), exc.code)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return print_error(f"{exc.strerror or exc}{where}; the settings file was not changed", EXIT_FAILED)


def _run(args: argparse.Namespace, out: Any) -> int:
    from .secrets import redact
    if args.project_dir is not None and args.scope == "user":
        raise InstallError("--project-dir applies to --scope project or local, not user", EXIT_USAGE)
    project = Path(args.project_dir or os.getcwd()).expanduser().absolute()
    if args.scope != "user" and not project.is_dir():
        raise InstallError(f"--project-dir {str(project)!r} is not a directory", EXIT_USAGE)
    path = settings_path(args.scope, project)
    installing = args.hooks_action == "install"
    if installing:
        events = _events(args.events)
        db = _db(getattr(args, "db", None))
        launcher = this_installation()
    settings = _Settings(path, _read(path))
    if installing:
        new, notes = plan_install(settings.data, launcher, events, db)
        print(f"command: {shlex.join(launcher.argv)} ({launcher.reason})", file=out)
        if db is None and os.environ.get("AGENTCACHE_DB"):
            print(
                "note: AGENTCACHE_DB is set here, but a hook sees Claude Code's environment, not this shell's nor the "
                "server's `env` block: add --db to pin the store in the hook command",
                file=out,
            )
        if args.scope == "project":
            print(f"note: {path} is shared through the project's repository, and this path is this machine's", file=out)
    else:
        new, notes = plan_uninstall(settings.data)
    if new == settings.data:
        print(f"{path}: nothing to change" + ("" if installing or notes else " (no agentcache hooks)"), file=out)
        for note in notes:
            print(f"  {note}", file=out)
        return 0
    text = settings.render(new)
    if args.dry_run:
        print(f"{path}: would change (dry run, nothing written):", file=out)
        for note in notes:
            print(f"  {note}", file=out)
        old_lines = settings.text.splitlines(keepends=True)
        diff = difflib.unified_diff(old_lines, text.splitlines(keepends=True), str(path), f"{path} (after)")
        # the lines around the change may hold the file's secrets (an "env" block's API keys): shown redacted
        out.writelines(redact(line if line.endswith("\n") else line + "\n").text for line in diff)
        return 0
    backup = write_settings(path, settings, text)
    print(f"{path}: {'installed' if installing else 'uninstalled'}", file=out)
    for note in notes:
        print(f"  {note}", file=out)
    print(f"  previous file: {backup}" if backup else "  (a new file: no previous one to keep)", file=out)
    return 0
