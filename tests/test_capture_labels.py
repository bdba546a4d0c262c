"""The capture bench's data stays usable: the labelled messages, the transcript fixtures and the scoring.

bench/capture_labels.jsonl is what transcript capture is scored on (bench/capture_precision.py);
tests/fixtures/transcripts/ holds the transcripts other tests ingest, with planted.json saying which lines
are damaged and which durable memories are planted. These tests keep both honest as they are edited.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "bench" / "capture_labels.jsonl"
TRANSCRIPTS = ROOT / "tests" / "fixtures" / "transcripts"
PLANTED = json.loads((TRANSCRIPTS / "planted.json").read_text(encoding="utf-8"))
KINDS = {"decision", "preference", "convention", "fix", "fact"}


def bench() -> ModuleType:
    """bench/capture_precision.py, loaded once (its dataclasses need it registered in sys.modules)."""
    if "capture_precision" not in sys.modules:
        spec = importlib.util.spec_from_file_location("capture_precision", ROOT / "bench" / "capture_precision.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["capture_precision"] = module
        spec.loader.exec_module(module)
    return sys.modules["capture_precision"]


def label_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- the labelled messages -----------------------------------------------------------------------


def test_every_labelled_message_has_a_unique_id_a_role_a_text_a_label_and_a_reason() -> None:
    rows = label_rows()
    assert len(rows) >= 200
    ids = Counter(r["id"] for r in rows)
    assert [i for i, n in ids.items() if n > 1] == []
    for r in rows:
        assert r["role"] in {"user", "assistant"}, r["id"]
        assert r["label"] in {"keep", "drop"}, r["id"]
        assert isinstance(r["text"], str) and r["text"].strip(), r["id"]
        assert isinstance(r["why"], str) and r["why"].strip(), r["id"]
        assert isinstance(r.get("case"), str) and r["case"], r["id"]


def test_a_kept_message_names_its_kind_and_a_dropped_one_none() -> None:
    for r in label_rows():
        if r["label"] == "keep":
            assert r["kind"] in KINDS, r["id"]
        else:
            assert r["kind"] == "", r["id"]


def test_the_labels_hold_every_kind_both_roles_and_a_keep_share_between_a_quarter_and_a_half() -> None:
    rows = label_rows()
    kept = [r for r in rows if r["label"] == "keep"]
    assert {r["kind"] for r in kept} == KINDS
    assert {r["role"] for r in kept} == {"user", "assistant"}
    assert 0.25 <= len(kept) / len(rows) <= 0.5


def test_no_labelled_text_holds_a_secret_only_placeholders_the_bench_knows() -> None:
    secrets = bench().fake_secrets()
    for r in label_rows():
        for kind in re.findall(r"\{\{secret:([a-z_]+)\}\}", r["text"]):
            assert kind in secrets, (r["id"], kind)
        planted, _ = bench().plant_secrets(r["text"], secrets)
        assert "{{secret:" not in planted


# --- the scoring ---------------------------------------------------------------------------------


def test_keeping_everything_scores_the_share_labelled_keep_as_precision_and_full_recall() -> None:
    module = bench()
    rows = label_rows()
    judged, _ = module.judge(rows, module.keep_everything)
    figures = module.figures(judged)
    keep = sum(r["label"] == "keep" for r in rows)
    assert figures["precision"] == pytest.approx(keep / len(rows))
    assert figures["recall"] == 1.0
    assert (figures["tp"], figures["fp"], figures["fn"]) == (keep, len(rows) - keep, 0)


def test_keeping_nothing_has_no_precision_and_zero_recall() -> None:
    module = bench()
    judged, _ = module.judge(label_rows(), module.keep_nothing)
    figures = module.figures(judged)
    assert figures["precision"] is None and figures["recall"] == 0.0


def test_a_kept_memory_holding_a_planted_secret_or_a_private_word_is_reported() -> None:
    module = bench()
    rows = [r for r in label_rows() if r["case"] in {"secret", "private"}]
    judged, _ = module.judge(rows, module.keep_everything)
    flagged = {j.row["id"] for j in judged if j.problems}
    assert flagged == {r["id"] for r in rows}


def test_a_classifier_that_raises_is_counted_and_the_run_goes_on() -> None:
    module = bench()

    def broken(role: str, text: str) -> None:
        raise ValueError("boom")

    judged, _ = module.judge(label_rows()[:5], broken)
    assert [j.error for j in judged] == ["ValueError: boom"] * 5
    assert not any(j.kept for j in judged)


def test_the_split_is_fixed_by_id_and_each_half_holds_both_labels() -> None:
    module = bench()
    rows = label_rows()
    halves = {h: [r for r in rows if module.half_of(r["id"]) == h] for h in ("tune", "held-out")}
    assert all({r["label"] for r in of} == {"keep", "drop"} for of in halves.values())
    assert len(halves["tune"]) + len(halves["held-out"]) == len(rows)
    assert module.half_of("m001") == module.half_of("m001")


# --- the transcript fixtures ---------------------------------------------------------------------


def fixture_lines(name: str) -> list[str]:
    return (TRANSCRIPTS / name).read_text(encoding="utf-8").split("\n")


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_a_fixture_parses_as_json_objects_except_its_documented_damaged_lines(name: str) -> None:
    notes = PLANTED[name]
    text = (TRANSCRIPTS / name).read_text(encoding="utf-8")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines = lines[:-1]
    assert notes["truncated_last_line"] in (None, len(lines))
    for number, line in enumerate(lines, 1):
        if number in notes["blank_lines"]:
            assert line.strip() == "", number
            continue
        if number in notes["malformed_lines"]:
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)
            continue
        entry = json.loads(line)
        if number in notes["not_object_lines"]:
            assert not isinstance(entry, dict), number
        else:
            assert isinstance(entry, dict) and isinstance(entry.get("type"), str), number


def message_texts(entry: dict[str, Any]) -> list[str]:
    content = (entry.get("message") or {}).get("content")
    if isinstance(content, str):
        return [content]
    return [block["text"] for block in content or [] if block.get("type") == "text"]


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_every_planted_memory_is_a_whole_message_on_its_documented_line(name: str) -> None:
    lines = fixture_lines(name)
    planted = PLANTED[name]["planted"]
    assert planted
    for item in planted:
        entry = json.loads(lines[item["line"] - 1])
        assert entry["type"] == item["role"] == entry["message"]["role"]
        assert item["text"] in message_texts(entry)
        assert item["kind"] in KINDS
        assert 30 <= len(item["text"]) <= 400


def test_the_fixtures_cover_every_kind_and_the_shapes_the_readme_promises() -> None:
    assert {item["kind"] for notes in PLANTED.values() for item in notes["planted"]} == KINDS
    entries = [
        json.loads(line)
        for name in PLANTED
        for line in fixture_lines(name)
        if line.startswith("{") and line.endswith("}")
    ]
    blocks = {
        block.get("type")
        for e in entries
        if isinstance((e.get("message") or {}).get("content"), list)
        for block in e["message"]["content"]
    }
    assert {"text", "thinking", "tool_use", "tool_result"} <= blocks
    assert {e["type"] for e in entries} >= {"user", "assistant", "system", "summary"}
    assert any(e.get("isSidechain") for e in entries)
    assert any(e.get("isMeta") for e in entries)
    assert any(e.get("isCompactSummary") for e in entries)
    resumed = [json.loads(line) for line in fixture_lines("resumed.jsonl") if line]
    assert len({e["sessionId"] for e in resumed if e["type"] == "user"}) == 2
    assert PLANTED["damaged.jsonl"]["truncated_last_line"] is not None


SECRET_SHAPES = re.compile(
    r"sk-[A-Za-z0-9_-]{16,}|sk_(live|test)_|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|BEGIN [A-Z ]*PRIVATE KEY"
    r"|xox[abpr]-|hooks\.slack\.com/services|://[^/\s:@]+:[^/\s@]+@|password\s*[=:]",
    re.IGNORECASE,
)


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_no_fixture_transcript_holds_a_secret(name: str) -> None:
    text = (TRANSCRIPTS / name).read_text(encoding="utf-8")
    assert SECRET_SHAPES.search(text) is None
    assert "<private>" not in text.lower()
