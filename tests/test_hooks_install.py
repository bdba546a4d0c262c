"""`agentcache-mcp hooks install|uninstall claude-code`: the settings file edited safely, idempotently, reversibly."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agentcache_mcp.cli import main
from agentcache_mcp.hooks import install
from agentcache_mcp.hooks.install import (
    BACKUP_SUFFIX,
    InstallError,
    Launcher,
    choose_launcher,
    parse_our_command,
    unstable_reason,
)

LAUNCHER = "/opt/agent cache/bin/agentcache-mcp"
"""The installation the tests pretend to run from (a space in it: the command must quote it)."""
QUOTED = f"'{LAUNCHER}'"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    monkeypatch.delenv("AGENTCACHE_DB", raising=False)
    monkeypatch.setattr(install, "this_installation", lambda: Launcher((LAUNCHER,), "the tests' installation"))
    return home


@pytest.fixture
def user_settings(home: Path) -> Path:
    return home / ".claude" / "settings.json"


def run(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(["hooks", *argv])
    return int(exited.value.code or 0)


def write(path: Path, data: Any, indent: int = 2) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent) + "\n")
    return path.read_bytes()


def commands(data: dict[str, Any], event: str) -> list[str]:
    return [h["command"] for g in data.get("hooks", {}).get(event, []) for h in g["hooks"]]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


FOREIGN: dict[str, Any] = {
    "model": "opus",
    "permissions": {"allow": ["Bash(npm run:*)"]},
    "hooks": {
        "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "~/bin/check-bash"}]}],
        "SessionStart": [{"matcher": "", "hooks": [{"type": "command", "command": "cat NOTES.md", "timeout": 3}]}],
    },
    "env": {"FOO": "1"},
}


def test_install_writes_the_session_start_end_and_pre_compact_hooks_into_a_new_user_settings_file(
    user_settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("install", "claude-code") == 0
    data = json.loads(user_settings.read_text())
    assert data == {
        "hooks": {
            "SessionStart": [
                {"matcher": "", "hooks": [{"type": "command", "command": f"{QUOTED} hook session-start", "timeout": 10}]}
            ],
            "SessionEnd": [{"matcher": "", "hooks": [{"type": "command", "command": f"{QUOTED} hook ingest", "timeout": 30}]}],
            "PreCompact": [{"matcher": "", "hooks": [{"type": "command", "command": f"{QUOTED} hook ingest", "timeout": 30}]}],
        }
    }
    out = capsys.readouterr().out
    assert f"command: {QUOTED} (the tests' installation)" in out  # which command, and why
    assert "no previous one" in out
    assert not user_settings.with_name("settings.json" + BACKUP_SUFFIX).exists()


def test_claude_config_dir_moves_the_user_settings_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-config"))
    assert run("install", "claude-code") == 0
    assert (tmp_path / "claude-config" / "settings.json").is_file()
    assert not (home / ".claude").exists()


def test_a_second_install_changes_nothing(user_settings: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(user_settings, FOREIGN, indent=4)
    assert run("install", "claude-code") == 0
    first = user_settings.read_bytes()
    backup = user_settings.with_name("settings.json" + BACKUP_SUFFIX).read_bytes()
    capsys.readouterr()
    assert run("install", "claude-code") == 0
    assert user_settings.read_bytes() == first
    assert user_settings.with_name("settings.json" + BACKUP_SUFFIX).read_bytes() == backup  # not rewritten either
    assert "nothing to change" in capsys.readouterr().out


def test_install_keeps_every_other_setting_and_hook_and_the_key_order_and_indentation(user_settings: Path) -> None:
    write(user_settings, FOREIGN, indent=4)
    assert run("install", "claude-code") == 0
    text = user_settings.read_text()
    data = json.loads(text)
    assert list(data) == ["model", "permissions", "hooks", "env"]
    assert list(data["hooks"]) == ["PreToolUse", "SessionStart", "SessionEnd", "PreCompact"]
    assert data["hooks"]["PreToolUse"] == FOREIGN["hooks"]["PreToolUse"]
    assert data["hooks"]["SessionStart"][0] == FOREIGN["hooks"]["SessionStart"][0]  # theirs first, untouched
    assert commands(data, "SessionStart") == ["cat NOTES.md", f"{QUOTED} hook session-start"]
    assert (data["model"], data["permissions"], data["env"]) == ("opus", FOREIGN["permissions"], {"FOO": "1"})
    assert text.startswith('{\n    "model"') and text.endswith("}\n")


def test_an_older_agentcache_command_is_updated_in_place_keeping_the_users_options(user_settings: Path) -> None:
    old = {
        "hooks": {
            "SessionStart": [
                {
                    "matcher": "startup",
                    "hooks": [
                        {
                            "type": "command",
                            "command": "AGENTCACHE_PROJECT_NAMESPACE=work /home/me/old-venv/bin/agentcache-mcp hook "
                            "session-start --max-chars 1000",
                            "timeout": 5,
                        }
                    ],
                }
            ],
            "SessionEnd": [{"hooks": [{"type": "command", "command": "/usr/bin/python3 -m agentcache_mcp hook ingest"}]}],
        }
    }
    write(user_settings, old)
    assert run("install", "claude-code") == 0
    data = json.loads(user_settings.read_text())
    start = data["hooks"]["SessionStart"]
    assert len(start) == 1 and start[0]["matcher"] == "startup"  # the user's narrowing is kept
    assert start[0]["hooks"] == [
        {
            "type": "command",
            "command": f"AGENTCACHE_PROJECT_NAMESPACE=work {QUOTED} hook session-start --max-chars 1000",
            "timeout": 5,
        }
    ]
    assert data["hooks"]["SessionEnd"] == [
        {"hooks": [{"type": "command", "command": f"{QUOTED} hook ingest", "timeout": 30}]}  # a timeout was missing
    ]


def test_duplicate_agentcache_hooks_of_one_event_are_reduced_to_one(user_settings: Path) -> None:
    ours = {"type": "command", "command": f"{QUOTED} hook ingest", "timeout": 30}
    theirs = {"type": "command", "command": "notify-send bye"}
    write(user_settings, {"hooks": {"SessionEnd": [{"hooks": [ours]}, {"hooks": [theirs, dict(ours)]}, {"hooks": [ours]}]}})
    assert run("install", "claude-code") == 0
    data = json.loads(user_settings.read_text())
    assert data["hooks"]["SessionEnd"] == [{"hooks": [ours]}, {"hooks": [theirs]}]


def test_uninstall_removes_only_our_hooks_and_the_containers_they_alone_filled(user_settings: Path) -> None:
    original = write(user_settings, FOREIGN)
    assert run("install", "claude-code", "--events", "SessionStart,SessionEnd,PreCompact,Stop") == 0
    assert run("uninstall", "claude-code") == 0
    assert user_settings.read_bytes() == original


def test_an_event_list_is_removed_when_our_hook_was_all_it_held(user_settings: Path) -> None:
    # an empty list the user kept ("Stop": []) cannot be told from one install created: both go; an empty list
    # of hooks and no list mean the same to Claude Code
    write(user_settings, {"hooks": {"Stop": [], "PreToolUse": []}})
    assert run("install", "claude-code", "--events", "Stop") == 0
    assert run("uninstall", "claude-code") == 0
    assert json.loads(user_settings.read_text()) == {"hooks": {"PreToolUse": []}}


def test_uninstall_of_a_file_install_created_leaves_an_empty_object(user_settings: Path) -> None:
    assert run("install", "claude-code") == 0
    assert run("uninstall", "claude-code") == 0
    assert json.loads(user_settings.read_text()) == {}


COMPOUND = {
    "SessionStart": "cd ~/notes; agentcache-mcp hook session-start > /tmp/last-memories.txt; cat /tmp/last-memories.txt",
    "SessionEnd": "agentcache-mcp hook ingest && notify-send 'session saved'",
}


def test_a_shell_command_the_user_wrote_around_ours_is_kept_as_written_and_not_doubled(
    user_settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(user_settings, {"hooks": {e: [{"matcher": "", "hooks": [{"type": "command", "command": c}]}] for e, c in COMPOUND.items()}})
    assert run("install", "claude-code") == 0
    data = json.loads(user_settings.read_text())
    for event, command in COMPOUND.items():
        assert commands(data, event) == [command]  # neither rewritten (its `;` `>` `&&` quoted away) nor doubled
    assert commands(data, "PreCompact") == [f"{QUOTED} hook ingest"]
    assert "kept as written" in capsys.readouterr().out


def test_uninstall_leaves_a_shell_command_around_ours_and_says_so(
    user_settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = write(
        user_settings, {"hooks": {e: [{"matcher": "", "hooks": [{"type": "command", "command": c}]}] for e, c in COMPOUND.items()}}
    )
    assert run("uninstall", "claude-code") == 0
    assert user_settings.read_bytes() == original  # the user's other commands are not deleted with ours
    out = capsys.readouterr().out
    assert "SessionEnd" in out and "by hand" in out


def test_uninstall_without_our_hooks_writes_nothing(user_settings: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = write(user_settings, FOREIGN)
    assert run("uninstall", "claude-code") == 0
    assert user_settings.read_bytes() == original
    assert not user_settings.with_name("settings.json" + BACKUP_SUFFIX).exists()
    assert "no agentcache hooks" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["install", "uninstall"])
def test_a_dry_run_prints_the_change_and_writes_nothing(
    user_settings: Path, action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if action == "uninstall":
        assert run("install", "claude-code") == 0
    before = user_settings.read_bytes() if user_settings.exists() else None
    capsys.readouterr()
    assert run(action, "claude-code", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "dry run, nothing written" in out
    sign = "+" if action == "install" else "-"
    assert f'{sign}            "command": "{QUOTED} hook session-start"' in out.replace('\\"', '"')
    if before is None:
        assert not user_settings.parent.exists()
    else:
        assert user_settings.read_bytes() == before
        assert sorted(p.name for p in user_settings.parent.iterdir()) == ["settings.json"]


def test_a_dry_run_never_prints_a_secret_the_settings_file_holds_near_the_change(
    user_settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "sk-ant-api03-" + "Qx7" * 30  # as Claude Code users put it in "env"
    write(user_settings, {"model": "opus", "env": {"ANTHROPIC_API_KEY": key, "DB_PASSWORD": "Tr0ub4dor&3horse"}})
    assert run("install", "claude-code", "--dry-run") == 0
    out = capsys.readouterr().out
    assert '+  "hooks": {' in out  # the change is shown, with the lines around it
    assert "ANTHROPIC_API_KEY" in out and key[:16] not in out and "Tr0ub4dor" not in out


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"model": "opus",}', "is not valid JSON (line 1, column 18"),
        ('{"hooks": {"SessionStart": [', "is not valid JSON (line 1"),
        ("[1, 2]", "holds JSON list, not an object"),
        ('{"hooks": []}', '"hooks" is not an object'),
        ('{"hooks": {"SessionEnd": {"matcher": ""}}}', "\"hooks\".'SessionEnd' is not a list"),
        ('{"hooks": {}, "hooks": {"Stop": []}}', "the key 'hooks' appears twice"),
        ("// comment\n{}", "is not valid JSON"),
    ],
)
def test_a_settings_file_that_is_not_valid_settings_json_is_refused_in_one_line_and_left_alone(
    user_settings: Path, content: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    user_settings.parent.mkdir(parents=True)
    user_settings.write_text(content)
    for action in ("install", "uninstall"):
        assert run(action, "claude-code") == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err and "nothing was written" in err, err
        assert user_settings.read_text() == content
    assert sorted(p.name for p in user_settings.parent.iterdir()) == ["settings.json"]


def test_a_settings_file_that_is_not_utf8_is_refused(user_settings: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user_settings.parent.mkdir(parents=True)
    user_settings.write_bytes(b'{"model": "\xff"}')
    assert run("install", "claude-code") == 1
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert user_settings.read_bytes() == b'{"model": "\xff"}'


def test_an_empty_settings_file_counts_as_an_empty_object(user_settings: Path) -> None:
    user_settings.parent.mkdir(parents=True)
    user_settings.write_text("")
    assert run("install", "claude-code") == 0
    assert set(json.loads(user_settings.read_text())["hooks"]) == {"SessionStart", "SessionEnd", "PreCompact"}


def test_the_previous_file_is_kept_as_a_backup_with_its_permissions(user_settings: Path) -> None:
    original = write(user_settings, FOREIGN)
    user_settings.chmod(0o600)
    assert run("install", "claude-code") == 0
    backup = user_settings.with_name("settings.json" + BACKUP_SUFFIX)
    assert backup.read_bytes() == original
    assert stat.S_IMODE(user_settings.stat().st_mode) == 0o600  # the file keeps its mode
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600  # and the backup, which holds the same settings
    installed = user_settings.read_bytes()
    assert run("uninstall", "claude-code") == 0
    assert backup.read_bytes() == installed  # one backup: the file before the last change


def test_a_failed_write_leaves_the_settings_file_whole_and_no_temporary_file(
    user_settings: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = write(user_settings, FOREIGN)
    real_fsync = os.fsync
    calls: list[int] = []

    def disk_full(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            calls.append(fd)
        if len(calls) == 2:  # the backup is written; the new settings file is not
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(install.os, "fsync", disk_full)
    assert run("install", "claude-code") == 1
    monkeypatch.undo()
    assert "No space left on device" in capsys.readouterr().err
    assert user_settings.read_bytes() == original
    assert leftovers(user_settings.parent) == []


def test_a_file_changed_by_another_program_meanwhile_is_not_overwritten(
    user_settings: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(user_settings, FOREIGN)
    real_chmod = os.chmod

    def claude_code_writes_meanwhile(path: Any, mode: int, **kw: Any) -> None:
        real_chmod(path, mode, **kw)
        if str(path).endswith(".partial") and ".settings.json." in str(path):
            user_settings.write_text('{"model": "sonnet"}\n')

    monkeypatch.setattr(install.os, "chmod", claude_code_writes_meanwhile)
    assert run("install", "claude-code") == 1
    monkeypatch.undo()
    assert "changed by another program" in capsys.readouterr().err
    assert user_settings.read_text() == '{"model": "sonnet"}\n'
    assert leftovers(user_settings.parent) == []


def test_a_symlinked_settings_file_is_written_where_it_points_and_stays_a_link(user_settings: Path, tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles" / "claude-settings.json"
    original = write(dotfiles, FOREIGN)
    user_settings.parent.mkdir(parents=True)
    user_settings.symlink_to(dotfiles)
    assert run("install", "claude-code") == 0
    assert user_settings.is_symlink()
    assert commands(json.loads(dotfiles.read_text()), "SessionEnd") == [f"{QUOTED} hook ingest"]
    assert user_settings.with_name("settings.json" + BACKUP_SUFFIX).read_bytes() == original


@pytest.mark.parametrize(("scope", "name"), [("project", "settings.json"), ("local", "settings.local.json")])
def test_project_and_local_scopes_write_in_the_projects_claude_folder(
    home: Path, tmp_path: Path, scope: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    assert run("install", "claude-code", "--scope", scope, "--project-dir", str(project)) == 0
    assert commands(json.loads((project / ".claude" / name).read_text()), "PreCompact") == [f"{QUOTED} hook ingest"]
    assert not (home / ".claude").exists()
    monkeypatch.chdir(project)  # the default project is the current directory
    assert run("uninstall", "claude-code", "--scope", scope) == 0
    assert json.loads((project / ".claude" / name).read_text()) == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["install", "claude-code", "--project-dir", "."], "--project-dir applies to --scope project or local"),
        (["install", "claude-code", "--scope", "local", "--project-dir", "/no/such/dir"], "is not a directory"),
        (["install", "claude-code", "--events", "SessionStart,Notification"], "unknown event 'Notification'"),
        (["install", "claude-code", "--events", ","], "no event"),
        (["install", "claude-code", "--db", "postgresql://me:hunter2@db/mem"], "--db holds a password"),
        (["install", "claude-code", "--db", "postgresql://me@db/mem?password=hunter2"], "--db holds a password"),
        (["install", "claude-code", "--db", "/no/such/dir/memory.db"], "does not exist"),
    ],
)
def test_bad_flags_are_usage_errors_and_write_nothing(
    user_settings: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert "hunter2" not in err
    assert not user_settings.parent.exists()


def test_an_unknown_host_is_refused_by_the_parser(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("install", "cursor") == 2
    assert "invalid choice: 'cursor'" in capsys.readouterr().err


def test_events_choose_the_hooks_and_stop_is_opt_in(user_settings: Path) -> None:
    assert run("install", "claude-code") == 0
    assert "Stop" not in json.loads(user_settings.read_text())["hooks"]
    assert run("install", "claude-code", "--events", "SessionStart,Stop") == 0
    data = json.loads(user_settings.read_text())
    assert list(data["hooks"]) == ["SessionStart", "Stop"]  # ours on the events not chosen are removed
    assert commands(data, "Stop") == [f"{QUOTED} hook ingest"]


def test_db_is_written_into_the_hook_commands_as_an_absolute_path(
    user_settings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run("install", "claude-code", "--db", "memory.db") == 0
    data = json.loads(user_settings.read_text())
    assert commands(data, "SessionStart") == [f"{QUOTED} hook session-start --db {tmp_path / 'memory.db'}"]
    assert run("install", "claude-code", "--db", str(tmp_path / "other.db")) == 0  # replaced, not added
    assert commands(json.loads(user_settings.read_text()), "SessionEnd") == [
        f"{QUOTED} hook ingest --db {tmp_path / 'other.db'}"
    ]
    with pytest.raises(SystemExit) as exited:  # --db before the command too, and a URL without password as it is
        main(["--db", "postgresql://me@db/mem", "hooks", "install", "claude-code"])
    assert exited.value.code == 0
    assert commands(json.loads(user_settings.read_text()), "PreCompact") == [f"{QUOTED} hook ingest --db postgresql://me@db/mem"]


def test_agentcache_db_in_this_shell_without_db_gets_a_note(
    user_settings: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTCACHE_DB", "/somewhere/memory.db")
    assert run("install", "claude-code") == 0
    assert "add --db to pin the store" in capsys.readouterr().out
    assert "--db" not in user_settings.read_text()


def test_the_written_commands_run_in_a_shell_with_their_arguments_intact(
    user_settings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Claude Code runs a hook's command through a shell: a path with spaces or quotes must reach us whole
    launcher = tmp_path / "my tools" / "agentcache-mcp"
    launcher.parent.mkdir()
    launcher.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_OUT"\ncat > "$STDIN_OUT"\n')
    launcher.chmod(0o755)
    db = tmp_path / "it's my" / "memory.db"
    db.parent.mkdir()
    monkeypatch.setattr(install, "this_installation", lambda: Launcher((str(launcher),), "test"))
    assert run("install", "claude-code", "--db", str(db)) == 0
    data = json.loads(user_settings.read_text())
    for event, hook_event in (("SessionStart", "session-start"), ("SessionEnd", "ingest"), ("PreCompact", "ingest")):
        (command,) = commands(data, event)
        env = {**os.environ, "ARGV_OUT": str(tmp_path / "argv"), "STDIN_OUT": str(tmp_path / "stdin")}
        subprocess.run(["sh", "-c", command], input=b'{"session_id": "s"}', env=env, check=True, timeout=30)
        assert (tmp_path / "argv").read_text().splitlines() == ["hook", hook_event, "--db", str(db)]
        assert (tmp_path / "stdin").read_bytes() == b'{"session_id": "s"}'


# which entries are ours


@pytest.mark.parametrize(
    "command",
    [
        "agentcache-mcp hook session-start",
        "'/path with space/bin/agentcache-mcp' hook ingest --db /x.db",
        "/venv/bin/python -m agentcache_mcp --db /x.db hook ingest",
        "C:/Users/me/.local/bin/agentcache-mcp.exe hook session-start",
        "AGENTCACHE_DB=/x.db agentcache-mcp hook ingest",
    ],
)
def test_our_hook_commands_are_recognised(command: str) -> None:
    assert parse_our_command(command) is not None


@pytest.mark.parametrize(
    "command",
    [
        "agentcache-mcp serve",
        "agentcache-mcp hook other-event",
        "bash -c 'agentcache-mcp hook ingest && notify-send done'",  # a wrapper of the user's: not ours to edit
        "my-agentcache-mcp hook ingest",
        "python -m agentcache_mcp_fork hook ingest",
        "unbalanced 'quote",
        None,
        42,
    ],
)
def test_other_commands_are_not_taken_for_ours(command: Any) -> None:
    assert parse_our_command(command) is None


# which command path


def _script(folder: Path, body: str = "#!/bin/sh\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "agentcache-mcp"
    script.write_text(body)
    script.chmod(0o755)
    return script


def test_the_script_on_path_is_chosen_unresolved_when_it_is_this_installation(tmp_path: Path) -> None:
    ours = _script(tmp_path / "pipx" / "venvs" / "agentcache-mcp" / "bin")
    local_bin = tmp_path / "local-bin"
    local_bin.mkdir()
    (local_bin / "agentcache-mcp").symlink_to(ours)  # what pipx and uv put on PATH
    chosen = choose_launcher(path_env=f"/nonexistent:{local_bin}", scripts_dirs=[ours.parent], executable=Path("/x/python"))
    assert chosen.argv == (str(local_bin / "agentcache-mcp"),)
    assert "on PATH is this installation" in chosen.reason


def test_another_installation_on_path_is_passed_over_for_this_ones_script(tmp_path: Path) -> None:
    other = _script(tmp_path / "other" / "bin")
    ours = _script(tmp_path / "venv" / "bin")
    chosen = choose_launcher(path_env=str(other.parent), scripts_dirs=[ours.parent], executable=Path("/x/python"))
    assert chosen.argv == (str(ours),)
    assert f"on PATH is another installation ({other})" in chosen.reason


def test_this_installations_script_is_used_when_none_is_on_path(tmp_path: Path) -> None:
    ours = _script(tmp_path / "venv" / "bin")
    chosen = choose_launcher(path_env="", scripts_dirs=[ours.parent], executable=Path("/x/python"))
    assert chosen.argv == (str(ours),) and "not on PATH" in chosen.reason


def test_without_a_script_the_installations_python_runs_the_module(tmp_path: Path) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    chosen = choose_launcher(path_env="", scripts_dirs=[tmp_path / "venv" / "bin"], executable=python)
    assert chosen.argv == (str(python), "-m", "agentcache_mcp")
    assert "no `agentcache-mcp` script" in chosen.reason


@pytest.mark.parametrize(
    "folder",
    [
        ".cache/uv/archive-v0/Xa8f3/bin",  # uvx: a cache uv may clean at any time
        "Library/Caches/pip/bin",
        "homebrew/Cellar/agentcache-mcp/1.2.3/libexec/bin",
        "venvs/agentcache_mcp-0.4.1/bin",
    ],
)
def test_a_launcher_in_a_cache_or_a_versioned_folder_is_refused(tmp_path: Path, folder: str) -> None:
    ours = _script(tmp_path / folder)
    with pytest.raises(InstallError, match="the hooks would stop working"):
        choose_launcher(path_env="", scripts_dirs=[ours.parent], executable=Path("/x/python"))


def test_stable_launchers_are_not_taken_for_versioned_ones() -> None:
    for path in (
        "/home/me/.local/bin/agentcache-mcp",
        "/home/me/.local/share/uv/tools/agentcache-mcp/bin/agentcache-mcp",
        "/home/me/.local/share/pipx/venvs/agentcache-mcp/bin/agentcache-mcp",
        "/opt/homebrew/bin/agentcache-mcp",
        "/usr/bin/python3.11",
        "C:\\Users\\me\\.local\\bin\\agentcache-mcp.exe",
    ):
        assert unstable_reason(path) is None, path


def test_the_running_installation_gets_a_launcher_that_exists() -> None:
    chosen = install.this_installation()
    assert Path(chosen.argv[0]).is_absolute() and Path(chosen.argv[0]).exists()
    assert chosen.reason


@pytest.mark.parametrize("prefix", ["timeout 5", "nice -n 10", "env -u PYTHONPATH", "FOO=1 timeout 5"])
def test_a_prefix_the_user_put_before_an_older_command_is_kept_on_update(user_settings: Path, prefix: str) -> None:
    old = f"{prefix} /home/me/old-venv/bin/agentcache-mcp hook session-start"
    write(user_settings, {"hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": old, "timeout": 5}]}]}})
    assert run("install", "claude-code") == 0
    data = json.loads(user_settings.read_text())
    assert data["hooks"]["SessionStart"] == [
        {"hooks": [{"type": "command", "command": f"{prefix} {QUOTED} hook session-start", "timeout": 5}]}
    ]
