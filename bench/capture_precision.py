#!/usr/bin/env python3
"""How well transcript capture picks durable memories: a classifier scored on labelled transcript messages.

    python bench/capture_precision.py [bench/capture_labels.jsonl] [--classifier module:function] [--split]
                                      [--show-held-out] [--limit N]

Each line of the set is {"id", "role": "user" | "assistant", "text", "label": "keep" | "drop",
"kind": "decision" | "preference" | "convention" | "fix" | "fact" | "" (empty for drop), "case", "why"}.
keep means a durable memory worth having in a later session of the same project; `case` names the shape of
the message (plain, question, moment, hedge, tool-noise, secret, private, reversed, failed-fix, ...), so the
errors can be read by shape. The labels were written and committed before any capture rule was seen.

The classifier is called as classify(role, text) and returns an object with `.text` and `.kind` (a memory to
keep) or None. The default is the product's, agentcache_mcp.hooks.capture:classify. The baselines
`keep_nothing`, `keep_everything` and `keep_user_statements` (every user message of 30+ characters that does
not end in "?") are named bare: `--classifier keep_everything`. They are reference points, not the product.

Printed: precision (kept and labelled keep / kept), recall (kept and labelled keep / labelled keep), F1, the
counts, a confusion of the labelled kind against the returned kind, what was kept per case, and the false
positives and false negatives (id and the first 80 characters). Also checked for every memory returned: its
length (30-400 characters), its kind, and that it holds no planted secret and nothing from inside
<private>...</private>; each violation is listed.

Secrets are not in the label file: a text holds {{secret:<kind>}} placeholders, filled here at run time
with fake values of the right shape (built from a seeded generator, so no secret-shaped literal sits in the
repository for a scanner to flag, and every run scores the same text).

--split scores two halves fixed by a hash of each id: "tune" (its errors are listed, tune the rules on it)
and "held-out" (figures only; report these). --show-held-out lists the held-out errors too, which spends
the held-out half: do it once, at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import random
import re
import string
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_LABELS = ROOT / "bench" / "capture_labels.jsonl"
DEFAULT_CLASSIFIER = "agentcache_mcp.hooks.capture:classify"
KINDS = ("decision", "preference", "convention", "fix", "fact")
MIN_CHARS, MAX_CHARS = 30, 400
_PLACEHOLDER = re.compile(r"\{\{secret:([a-z_]+)\}\}")
_PRIVATE = re.compile(r"<private>(.*?)(?:</private>|\Z)", re.IGNORECASE | re.DOTALL)


# --- baselines: reference points, printed as such ----------------------------------------------------


@dataclass(frozen=True)
class BaselineCandidate:
    text: str
    kind: str


def keep_nothing(role: str, text: str) -> BaselineCandidate | None:
    """Baseline: keeps nothing (precision undefined, recall 0)."""
    return None


def keep_everything(role: str, text: str) -> BaselineCandidate | None:
    """Baseline: keeps every message (precision = the share labelled keep, recall 1), cut to 400 characters."""
    return BaselineCandidate(text[:MAX_CHARS], "fact")


def keep_user_statements(role: str, text: str) -> BaselineCandidate | None:
    """Baseline: keeps every user message of 30+ characters that does not end in a question mark."""
    stripped = text.strip()
    if role != "user" or len(stripped) < MIN_CHARS or stripped.endswith("?"):
        return None
    return BaselineCandidate(stripped[:MAX_CHARS], "fact")


BASELINES: dict[str, Callable[[str, str], Any]] = {
    "keep_nothing": keep_nothing,
    "keep_everything": keep_everything,
    "keep_user_statements": keep_user_statements,
}


# --- secrets, planted at run time -----------------------------------------------------------------


def fake_secrets(seed: int = 21) -> dict[str, str]:
    """One fake secret per placeholder kind, each the shape a real one has (prefix, length, alphabet)."""
    rng = random.Random(seed)
    alnum = string.ascii_letters + string.digits

    def pick(alphabet: str, n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    upper_digits = string.ascii_uppercase + string.digits
    pem_body = "\n".join(pick(alnum + "+/", 64) for _ in range(6))
    return {
        "password": pick(alnum, 10) + "!" + pick(string.digits, 3),
        "aws_access_key": "AK" + "IA" + pick(upper_digits, 16),
        "aws_secret_key": pick(alnum + "+/", 40),
        "github_token": "gh" + "p_" + pick(alnum, 36),
        "sentry_dsn": f"https://{pick('0123456789abcdef', 32)}@o{pick(string.digits, 6)}.ingest.sentry.io/{pick(string.digits, 7)}",
        "env_line": "STRIPE_" + "SECRET_KEY=" + "sk_" + "live_" + pick(alnum, 24),
        "private_key": "-----BEGIN " + "PRIVATE KEY-----\n" + pem_body + "\n-----END " + "PRIVATE KEY-----",
        "openai_key": "sk-" + "proj-" + pick(alnum + "-_", 48),
        "stripe_key": "sk_" + "live_" + pick(alnum, 24),
        "database_url": f"postgresql://app:{pick(alnum, 14)}@localhost:5432/books_test",
        "slack_webhook": "https://hooks.slack.com/" + f"services/T{pick(upper_digits, 8)}/B{pick(upper_digits, 8)}/{pick(alnum, 24)}",
    }


def plant_secrets(text: str, secrets: dict[str, str]) -> tuple[str, list[str]]:
    """The text with each {{secret:kind}} filled, and the secret values it now holds."""
    planted: list[str] = []

    def fill(match: re.Match[str]) -> str:
        value = secrets[match.group(1)]  # an unknown kind is a broken label file: fail loudly
        planted.append(value)
        return value

    return _PLACEHOLDER.sub(fill, text), planted


def secret_pieces(value: str) -> list[str]:
    """What must not appear in a kept memory: the secret whole, and each of its lines of 12+ characters."""
    pieces = [value]
    pieces += [line for line in value.splitlines() if len(line) >= 12 and "-----" not in line]
    return pieces


def private_pieces(text: str) -> list[str]:
    """The private spans' words of 4+ characters that are not also outside a private span."""
    inside = " ".join(m.group(1) for m in _PRIVATE.finditer(text))
    outside = _PRIVATE.sub(" ", text)
    outside_words = set(re.findall(r"[\w+]{4,}", outside.lower()))
    return sorted({w for w in re.findall(r"[\w+]{4,}", inside.lower())} - outside_words)


# --- scoring ----------------------------------------------------------------------------------------


@dataclass
class Judged:
    row: dict[str, Any]
    text: str  # with the secrets planted
    kept: bool
    kind: str  # the returned kind, "" if nothing was kept
    memory: str
    error: str
    problems: list[str]


def load_labels(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def half_of(row_id: str) -> str:
    """Which half an id falls in, fixed by its hash: "tune" or "held-out"."""
    return "tune" if hashlib.sha256(row_id.encode("utf-8")).digest()[0] % 2 == 0 else "held-out"


def judge(rows: list[dict[str, Any]], classify: Callable[[str, str], Any]) -> tuple[list[Judged], float]:
    secrets = fake_secrets()
    judged: list[Judged] = []
    spent = 0.0
    for row in rows:
        text, planted = plant_secrets(row["text"], secrets)
        started = time.perf_counter()
        try:
            got = classify(row["role"], text)
            error = ""
        except Exception as exc:  # a classifier that raises is a finding, not the end of the run
            got, error = None, f"{type(exc).__name__}: {exc}"
        spent += time.perf_counter() - started
        memory = str(getattr(got, "text", "")) if got is not None else ""
        kind = str(getattr(got, "kind", "")) if got is not None else ""
        problems: list[str] = []
        if got is not None:
            if not MIN_CHARS <= len(memory) <= MAX_CHARS:
                problems.append(f"length {len(memory)} outside {MIN_CHARS}-{MAX_CHARS}")
            if kind not in KINDS:
                problems.append(f"kind {kind!r} is not one of {', '.join(KINDS)}")
            for value in planted:
                if any(piece in memory for piece in secret_pieces(value)):
                    problems.append("holds a planted secret")
                    break
            leaked = [w for w in private_pieces(text) if w in memory.lower()]
            if leaked:
                problems.append(f"holds private words: {', '.join(leaked)}")
        judged.append(Judged(row, text, got is not None, kind, memory, error, problems))
    return judged, spent


def figures(judged: list[Judged]) -> dict[str, Any]:
    tp = sum(1 for j in judged if j.kept and j.row["label"] == "keep")
    fp = sum(1 for j in judged if j.kept and j.row["label"] == "drop")
    fn = sum(1 for j in judged if not j.kept and j.row["label"] == "keep")
    tn = len(judged) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else None
    return {"n": len(judged), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1}


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _line(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def print_figures(title: str, judged: list[Judged]) -> None:
    f = figures(judged)
    keep = sum(1 for j in judged if j.row["label"] == "keep")
    print(f"{title}: {f['n']} messages ({keep} labelled keep, {f['n'] - keep} drop), kept {f['tp'] + f['fp']}")
    print(f"  precision {_ratio(f['precision'])}  recall {_ratio(f['recall'])}  F1 {_ratio(f['f1'])}"
          f"  (tp {f['tp']}, fp {f['fp']}, fn {f['fn']}, tn {f['tn']})")


def print_confusion(judged: list[Judged]) -> None:
    labelled = (*KINDS, "drop")
    returned = sorted({j.kind for j in judged if j.kept} - set(KINDS))
    columns = (*KINDS, *returned, "none")
    counts = Counter((j.row["kind"] or "drop", (j.kind if j.kept else "none")) for j in judged)
    print("| labelled \\ returned | " + " | ".join(columns) + " | total |")
    print("|---" * (len(columns) + 2) + "|")
    for kind in labelled:
        cells = [counts[(kind, c)] for c in columns]
        print(f"| {kind} | " + " | ".join(str(c) for c in cells) + f" | {sum(cells)} |")


def print_cases(judged: list[Judged]) -> None:
    print("| case | labelled keep: kept / n | labelled drop: kept / n |")
    print("|---|---|---|")
    for case in sorted({j.row.get("case", "") for j in judged}):
        of = [j for j in judged if j.row.get("case", "") == case]
        keep = [j for j in of if j.row["label"] == "keep"]
        drop = [j for j in of if j.row["label"] == "drop"]
        cell_keep = f"{sum(j.kept for j in keep)} / {len(keep)}" if keep else "-"
        cell_drop = f"{sum(j.kept for j in drop)} / {len(drop)}" if drop else "-"
        print(f"| {case or '(none)'} | {cell_keep} | {cell_drop} |")


def print_errors(judged: list[Judged], limit: int) -> None:
    fps = [j for j in judged if j.kept and j.row["label"] == "drop"]
    fns = [j for j in judged if not j.kept and j.row["label"] == "keep"]
    for title, of in (("false positives (kept, labelled drop)", fps), ("false negatives (dropped, labelled keep)", fns)):
        print(f"{title}: {len(of)}")
        for j in of[:limit]:
            extra = f" -> {j.kind}" if j.kept else f" [{j.row['kind']}]"
            print(f"  {j.row['id']} {j.row['role'][:4]} ({j.row.get('case', '')}){extra}: {_line(j.text)}")
        if len(of) > limit:
            print(f"  ... {len(of) - limit} more")


def print_checks(judged: list[Judged]) -> None:
    broken = [j for j in judged if j.problems]
    raised = [j for j in judged if j.error]
    print(f"memories breaking a rule (length, kind, secret, private): {len(broken)}")
    for j in broken:
        print(f"  {j.row['id']}: {'; '.join(j.problems)}: {_line(j.memory)}")
    print(f"messages on which the classifier raised: {len(raised)}")
    for j in raised:
        print(f"  {j.row['id']}: {j.error}")


def resolve(spec: str) -> tuple[Callable[[str, str], Any], str]:
    """The classifier a --classifier value names, and how to print it."""
    if spec in BASELINES:
        return BASELINES[spec], f"baseline {spec}"
    module_name, _, function_name = spec.partition(":")
    if not function_name:
        raise SystemExit(f"--classifier {spec!r}: give module:function, or one of {', '.join(BASELINES)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(
            f"cannot import {module_name} ({exc}); score a baseline meanwhile: --classifier keep_everything"
        ) from None
    return getattr(module, function_name), spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("labels", nargs="?", default=str(DEFAULT_LABELS))
    parser.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                        help=f"module:function, or a baseline: {', '.join(BASELINES)} (default {DEFAULT_CLASSIFIER})")
    parser.add_argument("--split", action="store_true", help="score the tune and held-out halves separately")
    parser.add_argument("--show-held-out", action="store_true", help="with --split, list the held-out errors too")
    parser.add_argument("--limit", type=int, default=200, help="list at most this many errors of each sort")
    args = parser.parse_args(argv)

    classify, name = resolve(args.classifier)
    rows = load_labels(Path(args.labels))
    judged, spent = judge(rows, classify)
    print(f"{name} on {len(rows)} labelled messages from {args.labels} "
          f"({spent / max(len(rows), 1) * 1e6:.0f} µs per message)")
    print()
    if args.split:
        halves = {h: [j for j in judged if half_of(j.row["id"]) == h] for h in ("tune", "held-out")}
        print_figures("tune half", halves["tune"])
        print_figures("held-out half", halves["held-out"])
        print_figures("all", judged)
        print()
        shown = judged if args.show_held_out else halves["tune"]
        print("confusion, " + ("all" if args.show_held_out else "tune half") + ":")
        print_confusion(shown)
        print()
        print_cases(shown)
        print()
        print_errors(shown, args.limit)
        if not args.show_held_out:
            print("(held-out errors not listed: --show-held-out spends the held-out half)")
    else:
        print_figures("all", judged)
        print()
        print_confusion(judged)
        print()
        print_cases(judged)
        print()
        print_errors(judged, args.limit)
    print()
    print_checks(judged)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
