"""Which messages of a coding session are worth remembering: rules, no model.

A message yields at most one candidate (`classify`): the sentence (or two) that states a decision, a
preference, a convention, a fix that worked, or a fact the user stated. Precision over recall: most of a
session is requests, plans, questions, code and tool output, and a memory full of them is noise that every
later session start pays for. So:

- only the human's typed text (role `user`) and, for fixes only, the assistant's prose are read; a subagent's
  conversation, tool calls and results, thinking, summaries and system lines never are;
- code blocks, quoted lines, tables, log and stack-trace lines are dropped before sentences are split;
- a sentence must match one of the patterns below, and is dropped if it is a question, a hedge ("maybe",
  "I think", "should we"), a condition ("if ..."), a plan of the assistant ("I'll", "let me"), temporary
  ("for now", "right now"), or points at something it does not name ("let's go with that");
- the candidate is 30-400 characters (a short sentence takes its neighbour; a longer one is dropped, not cut),
  has `<private>` spans removed and secrets redacted (secrets.py; the whole message is redacted before it is cut
  into sentences, so a secret split across lines is seen whole); if a secret is still found after redaction
  (also in its URL-decoded form), or the redaction markers are most of it, it is dropped.

`durable_candidates` ranks a session's candidates by a fixed score (the kind, who said it, the strength of
its marker) and keeps the best `limit`, in a deterministic order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import unquote

from .secrets import redact, strip_private, strip_private_from
from .transcript import Message

MIN_CHARS = 30
MAX_CHARS = 400
KINDS = ("decision", "preference", "convention", "fix", "fact")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A durable memory found in one message."""

    text: str
    """30-400 characters, `<private>` removed, secrets redacted."""
    kind: str
    """decision / preference / convention / fix / fact"""
    score: float = 0.0
    """Higher is better: how `durable_candidates` ranks."""
    role: str = "user"
    uuid: str | None = None
    session_id: str | None = None
    line: int = 0


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


# (kind, pattern, weight, roles). The first pattern a sentence matches decides its kind.
_T = r"(?:the|our|this|my)"
RULES: tuple[tuple[str, re.Pattern[str], float, tuple[str, ...]], ...] = (
    # fixes that worked
    ("fix", _rx(r"\broot[- ]cause\b\s*(?:was|is|:|-|–|—|turned out)"), 3.0, ("user", "assistant")),
    (
        "fix",
        _rx(r"\bthe (?:real |actual )?(?:fix|solution|problem|issue|culprit|bug|cause) (?:was|turned out to be|ended up being)\b"),
        2.6,
        ("user", "assistant"),
    ),
    ("fix", _rx(r"\b(?:fixed|solved|resolved) (?:[\w`.-]+ ){0,4}by\b"), 2.6, ("user", "assistant")),
    (
        "fix",
        _rx(r"\b(?:it|that|this|everything|the build|the tests?|ci) (?:works|worked|is working|passes|passed|builds) (?:again |now )?(?:after|once|since)\b"),
        2.4,
        ("user", "assistant"),
    ),
    ("fix", _rx(r"\bthe (?:workaround|trick) (?:is|was)\b"), 2.2, ("user", "assistant")),
    ("fix", _rx(r"\bthe (?:fix|solution|workaround) is to\b"), 2.2, ("user", "assistant")),
    (
        "fix",
        _rx(r"^(?!(?:fixed|solved|resolved)\b).{8,}\b(?:fixed|solved|resolved) (?:it|this|that|the (?:[\w-]+ )?(?:issue|problem|bug|error|crash|build|tests?|failure))\b"),
        2.2,
        ("user", "assistant"),
    ),
    ("fix", _rx(r"\b(?:did the trick|was caused by|were caused by)\b"), 2.2, ("user", "assistant")),
    ("fix", _rx(r"\b(?:the )?(?:error|crash|warning|failure|problem) (?:went away|disappeared|is gone|stopped) (?:after|once|when)\b"), 2.2, ("user", "assistant")),
    ("fix", _rx(r"\b(?:it |this )?turned out (?:that )?(?:the|it|we|our)\b"), 2.0, ("user",)),
    # decisions
    ("decision", _rx(r"\b(?:we|i)(?:'ve| have)? decided\b"), 3.2, ("user",)),
    ("decision", _rx(r"\b(?:we|i)(?:'ve| have)? (?:agreed|settled|standardi[sz]ed) (?:on|to|that)\b"), 3.0, ("user",)),
    ("decision", _rx(r"\b(?:the )?decision (?:is|was)\b"), 3.0, ("user",)),
    ("decision", _rx(r"\b(?:we|i)(?:'re| are|'m| am) (?:going with|sticking with|switching to|moving to|migrating to|dropping)\b"), 2.8, ("user",)),
    ("decision", _rx(r"\blet'?s (?:go with|stick with|switch to|move to|migrate to|standardi[sz]e on|drop)\b"), 2.6, ("user",)),
    (
        "decision",
        _rx(r"\b(?:let'?s|we(?:'ll| will)|i(?:'ll| will)) (?:use|keep|pick|choose)\b.{2,200}\b(?:instead of|rather than|over)\b"),
        2.8,
        ("user",),
    ),
    ("decision", _rx(r"\b(?:we|i)(?:'ve| have)? (?:chose|chosen|picked|opted for|opted to)\b"), 2.6, ("user",)),
    (
        "decision",
        _rx(r"\b(?:we|i)(?:'ll| will| went| ended up going) (?:with|go with|stick with|switch to|standardi[sz]e on|migrate to|move to)\b"),
        2.4,
        ("user",),
    ),
    ("decision", _rx(r"\b(?:we|i)(?:'re| are|'m| am) not going to (?:use|support|add|ship|keep)\b"), 2.4, ("user",)),
    ("decision", _rx(r"\blet'?s not (?:use|add|support|ship|keep|do)\b"), 2.2, ("user",)),
    ("decision", _rx(r"\bthe plan is to\b"), 2.2, ("user",)),
    # preferences
    ("preference", _rx(r"\bi(?:'d| would)? (?:really |strongly )?prefer\b"), 3.0, ("user",)),
    ("preference", _rx(r"\bi(?:'d| would) rather\b"), 2.8, ("user",)),
    ("preference", _rx(r"\bmy preference is\b"), 3.0, ("user",)),
    ("preference", _rx(r"\bi (?:really )?(?:don't|do not) (?:like|want) (?:to see |it when |when |any |the )?"), 2.2, ("user",)),
    ("preference", _rx(r"^(?:please,? )?(?:always|never)\b"), 2.8, ("user",)),
    (
        "preference",
        _rx(r"^(?:please,? )?(?:don't|do not) (?:ever )?(?:use|add|commit|push|call|import|write|mock|put|rename|introduce|rely on|touch|edit|change)\b"),
        2.4,
        ("user",),
    ),
    ("preference", _rx(r"\b(?:you should|you must|make sure to|be sure to|remember to) (?:always|never)\b"), 2.6, ("user",)),
    ("preference", _rx(r"\bfrom now on\b|\bgoing forward\b"), 2.6, ("user",)),
    ("preference", _rx(r"\bi (?:like|love|hate) (?:to|it when|when|using|my|having)\b"), 2.2, ("user",)),
    ("preference", _rx(r"\bi want (?:you to )?(?:always|never)\b"), 2.6, ("user",)),
    ("preference", _rx(r"^(?:please,? )?keep (?:\w+ ){0,4}(?:short|small|simple|minimal|concise|terse|brief)\b"), 2.2, ("user",)),
    # conventions
    (
        "convention",
        _rx(r"\bin (?:this|our|the) (?:repo|repository|project|codebase|code base|team|monorepo|company)\b,? (?:we|all|every|each|the|it|nothing|no)\b"),
        3.0,
        ("user",),
    ),
    ("convention", _rx(r"\b(?:the|our) (?:convention|rule|policy|style|naming scheme) (?:here )?(?:is|says)\b"), 3.0, ("user",)),
    ("convention", _rx(r"\bby convention\b"), 2.6, ("user",)),
    (
        "convention",
        _rx(r"\b(?:tests?|migrations?|fixtures?|docs|configs?|scripts|components|helpers|secrets) (?:go|goes|live|lives|belong|belongs) (?:in|under|into|next to)\b"),
        2.4,
        ("user",),
    ),
    (
        "convention",
        _rx(r"\b(?:branch names?|commit messages?|pr titles?|tags|versions) (?:should|must|always|start|follow|use)\b"),
        2.4,
        ("user",),
    ),
    (
        "convention",
        _rx(r"\b(?:we|our team) (?:always|never|only|usually|normally|don't|do not)\b"),
        2.6,
        ("user",),
    ),
    (
        "convention",
        _rx(r"\bwe (?:use|run|deploy|name|prefix|write|keep|store|follow|host|build|test|squash|rebase|tag|pin|release)\b"),
        2.2,
        ("user",),
    ),
    (
        "convention",
        _rx(r"\b(?:all|every|each) (?:[\w-]+ ){0,2}(?:must|should|needs? to|has to|have to|goes|go|lives?|belongs?)\b"),
        2.2,
        ("user",),
    ),
    # facts the user stated
    (
        "fact",
        _rx(r"\b(?:the|our) (?:hard |release |submission )?(?:deadline|release date|launch|code freeze|freeze|demo|cutover) (?:is|was moved to|moved to|has moved to)\b"),
        2.6,
        ("user",),
    ),
    (
        "fact",
        _rx(
            r"\b(?:our|the) (?:staging|production|prod|dev|development|test|qa|ci|main|default|primary|shared|internal|local)"
            r"(?: [\w-]+)? (?:db|database|server|cluster|branch|environment|env|bucket|host|url|region|account|registry|"
            r"instance|queue|cache|api|endpoint|domain|machine|box|vm|runner|pipeline|workflow|stack)s? "
            r"(?:is|are|runs|run|lives|live|sits|uses|use|was moved|has moved|is hosted|is deployed|points)\b"
        ),
        2.6,
        ("user",),
    ),
    (
        "fact",
        _rx(
            r"\b(?:our|my) (?:team|company|org|organi[sz]ation|manager|lead|tech lead|customer|client|stack|backend|frontend|"
            r"database|db|api|monorepo|product|app|service|cluster|infra|infrastructure|ci|cd) (?:is|are|uses|runs|lives|"
            r"is hosted|is deployed|is called|is named|owns)\b"
        ),
        2.4,
        ("user",),
    ),
    ("fact", _rx(r"\b[A-Z][a-z]+ (?:is|owns) (?:the |our )?(?:owner|maintainer|lead|contact|point of contact|on-call|dba)\b"), 2.2, ("user",)),
    ("fact", _rx(r"\bi (?:work|am working) (?:at|for|on the)\b"), 2.2, ("user",)),
    ("fact", _rx(r"\b(?:is|are) (?:hosted|deployed|running|served) (?:on|at|in|from|behind)\b"), 2.2, ("user",)),
    ("fact", _rx(r"\b(?:lives|live|is located|are located|is kept|are kept|is stored|are stored) (?:in|at|under|on)\b"), 2.2, ("user",)),
    ("fact", _rx(r"\b(?:is|are) (?:written|built) (?:in|with)\b"), 2.2, ("user",)),
    ("fact", _rx(r"\b(?:listens|runs|is served) on port\b"), 2.2, ("user",)),
    ("fact", _rx(r"\b(?:is|are) (?:owned|maintained) by\b"), 2.2, ("user",)),
    ("fact", _rx(r"\bmy (?:name|email|username|handle|timezone|time zone|role|title|team) is\b"), 2.4, ("user",)),
    ("fact", _rx(r"\bi(?:'m| am) (?:the |a |an )?(?:[\w-]+ ){0,2}(?:engineer|developer|lead|maintainer|manager|designer|admin|founder|cto|owner)\b"), 2.2, ("user",)),
    ("fact", _rx(r"\bi(?:'m| am) (?:based|located) in\b"), 2.2, ("user",)),
)

# A sentence with any of these is not a durable statement, whatever it matched.
_QUESTION_START = _rx(
    r"^(?:what|why|how|when|where|who|whom|which|can|could|would|should|shall|do|does|did|is|are|was|were|will|"
    r"have|has|any|anyone|isn't|aren't|doesn't|don't you|didn't|won't|wouldn't|shouldn't)\b(?! not\b)"
)
_HEDGE = _rx(
    r"\b(?:maybe|perhaps|possibly|might|may be|not sure|unsure|i think|i guess|i believe|i suppose|i wonder|"
    r"wondering|probably|likely|could be|seems?|seemed|appears? to|consider|considering|what if|shall we|"
    r"should we|do we|can we|could we|would it|how about|any idea|let me know|todo|tbd|hopefully|in theory|"
    r"not decided|undecided|haven't decided|have not decided|not yet decided|no decision|reconsider|"
    r"for now|right now|for the moment|at the moment|temporarily|this time|just this once|today|tonight|"
    r"for this (?:task|pr|change|session|one)|try (?:it )?again|(?:can|could|will) you|wouldn't|would(?! rather| prefer)|unless)\b"
)
_CONDITION = _rx(r"^(?:if|when|once|whenever|unless|in case|assuming|suppose)\b")
_ASSISTANT_PLAN = _rx(
    r"^(?:i'll|i will|i'm going to|i am going to|let me|let's|now i|next,? i|i need to|i should|we need to|we should|"
    r"you can|you could|you might|you may|to fix this|here's|here is|i've updated|i updated|i've made)\b"
)
_FAILED_FIX = _rx(
    r"\b(?:didn't|did not|doesn't|does not|don't|won't|wasn't|isn't|not|no longer|still) (?:work|fix|help|solve|resolve|the fix|the cause|pass)\w*"
)
_VAGUE_OBJECT = _rx(
    r"\b(?:with|to|use|on|prefer|choose|chose|pick|picked|for) (?:that|this|it|them|those|these|the (?:first|second|third|last|"
    r"other|former|latter|above|previous|same) (?:one|option|approach|version|way|idea))\s*(?:[.!,;:]|$| instead| then)|"
    r"\b(?:to|with|use|on|for) the (?:other|former|latter|above|previous|same) \w+|"
    r"\b(?:like|want|prefer|hate|love) (?:this|that|it|these|those)\b"
)
_REQUEST = _rx(
    r"^(?:please,? |pls,? |now,? |then,? |and,? |also,? |so,? )?(?:add|fix|implement|write|create|update|make|change|remove|"
    r"delete|refactor|run|check|look|try|show|give|find|move|rename|revert|build|test|debug|investigate|explain|"
    r"help|read|open|install|set up|setup|go|do(?!\s+not\b)|finish|continue|start|stop|commit|push|merge|deploy|review|"
    r"clean|generate|convert|replace|split|rewrite|document|can you|could you|would you|will you)\b"
)
_STANDING = _rx(
    r"\b(?:from now on|going forward|from here on|in (?:the )?future|every time|each time)\b|"
    r"^(?:please,? )?(?:make sure|be sure|remember) (?:to )?(?:always|never)\b"
)
_SUBJECTLESS_FIX = _rx(r"^(?:fixed|solved|resolved)(?: (?:it|this|that))? by\b")
_VAGUE_REFERENCE = _rx(
    r"\bwhat (?:we|i|you)(?:'ve| have)? (?:decided|agreed|chose|picked|discussed)\b|"
    r"\bwe (?:use|run|keep|store|build|test|write) (?:this|that|it|these|those|them)\b"
)
_CHITCHAT = _rx(
    r"^(?:ok(?:ay)?|yes|yeah|yep|sure|no|nope|thanks|thank you|great|cool|nice|awesome|perfect|lgtm|sounds good|"
    r"good|alright|hmm+|hi|hello|hey)\b[\s,!.:-]*"
)
_TRANSIENT = _rx(r"\b(?:down|broken|failing|flaky|slow|not working|crashing|erroring|red|stuck|hanging|offline)\b")
_PRONOUN_START = _rx(r"^(?:it|this|that|these|those|they|he|she|which)\b")

_FENCE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9`*_])")
_MARKDOWN = re.compile(r"\*\*|__|(?<!\w)\*(?=\S)|(?<=\S)\*(?!\w)")
_REDACTION = re.compile(r"\[redacted [^\]]*\]")


def classify(role: str, text: str) -> Candidate | None:
    """The durable memory this message yields alone, or None (see the module docstring)."""
    found = candidates_in(role, text)
    return found[0] if found else None


def candidates_in(role: str, text: str) -> list[Candidate]:
    """Every candidate of one message, best first (at most one per sentence)."""
    if role not in ("user", "assistant") or not text:
        return []
    prose = _prose(strip_private(text))
    if not any(_match(role, sentence) for sentence in _sentences(prose)):
        return []  # most messages: no need to pay for redacting them
    # the prose is redacted whole before it is cut into sentences: a secret split across lines is seen whole
    sentences = _sentences(redact(prose).text)
    found: list[tuple[float, int, Candidate]] = []
    for index, sentence in enumerate(sentences):
        matched = _match(role, sentence)
        if matched is None:
            continue
        kind, weight = matched
        chosen = _self_contained(sentences, index)
        if chosen is None:
            continue
        final = _safe(chosen)
        if final is None:
            continue
        score = weight + (0.5 if role == "user" else 0.0) + _bonus(final)
        found.append((score, index, Candidate(final, kind, round(score, 3), role)))
    found.sort(key=lambda item: (-item[0], item[1]))
    return [c for _, _, c in found]


def durable_candidates(messages: Iterable[Message], limit: int = 10) -> list[Candidate]:
    """A session's best `limit` candidates: the best sentence of each message of the human (and the assistant's
    fixes), main conversation only; the same text once; ranked by score, then by where it was said."""
    return scan_session(messages, limit)[0]


def scan_session(messages: Iterable[Message], limit: int = 10, private_depth: int = 0) -> tuple[list[Candidate], int]:
    """`durable_candidates` of a part of a session, and the `<private>` spans it leaves open. A span the human
    opens in one message hides the following messages (the assistant's too, which may repeat it) until the
    human closes it; `private_depth` is what the part before left open."""
    ranked: list[tuple[float, int, int, Candidate]] = []
    seen: set[str] = set()
    depth = private_depth
    for order, message in enumerate(messages):
        if message.sidechain or message.role not in ("user", "assistant"):
            continue
        if message.role == "user":
            text, depth = strip_private_from(message.text, depth)
        else:
            text = "" if depth else message.text
        candidate = classify(message.role, text)
        if candidate is None:
            continue
        key = loose_key(candidate.text)
        if key in seen:
            continue
        seen.add(key)
        placed = replace(candidate, uuid=message.uuid, session_id=message.session_id, line=message.line)
        ranked.append((candidate.score, message.line, order, placed))
    ranked.sort(key=lambda item: (-item[0], item[1], item[2]))
    return [c for _, _, _, c in ranked[: max(0, limit)]], depth


def loose_key(text: str) -> str:
    """Two candidates with this key say the same: letters and digits only, case-folded."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def _prose(text: str) -> str:
    """The text with its code blocks removed and every line that is not prose blanked (line breaks kept)."""
    text = _FENCE.sub("\n", text)
    return "\n".join("" if _not_prose(line.rstrip()) else line for line in text.splitlines())


def _sentences(text: str) -> list[str]:
    """The prose of a message as sentences: code blocks, quotes, tables, logs and headings left out; list items
    and lines that end without punctuation are sentences of their own."""
    text = _FENCE.sub("\n", text)
    out: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            joined = " ".join(paragraph)
            out.extend(s.strip() for s in _SENTENCE_END.split(joined) if s.strip())
            paragraph.clear()

    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or _not_prose(line):
            flush()
            continue
        item = re.match(r"^\s*(?:[-*+•]|\d+[.)])\s+(.*)$", line)
        if item:
            flush()
            paragraph.append(item.group(1).strip())
            flush()
            continue
        stripped = re.sub(r"^#+\s*", "", stripped)
        paragraph.append(stripped)
        if not re.search(r"[.!?:,;]$", stripped):
            flush()
    flush()
    cleaned = []
    for sentence in out:
        sentence = _MARKDOWN.sub("", sentence).strip()
        sentence = _CHITCHAT.sub("", sentence).strip()
        if sentence:
            cleaned.append(sentence[0].upper() + sentence[1:])
    return cleaned


def _not_prose(line: str) -> bool:
    """Code, quotes, tables, shell lines, diffs, stack traces, logs: not where a person states a fact."""
    stripped = line.strip()
    if line.startswith(("    ", "\t")):
        return True
    if stripped.startswith((">", "|", "$ ", "Traceback", 'File "', "at ", "---", "+++", "@@", "diff ")):
        return True
    letters = sum(c.isalpha() or c.isspace() for c in stripped)
    return len(stripped) > 20 and letters / len(stripped) < 0.7


def _match(role: str, sentence: str) -> tuple[str, float] | None:
    if len(sentence) < 12 or sentence.endswith("?") or "?" in sentence[-40:]:
        return None
    if _QUESTION_START.search(sentence) or _CONDITION.search(sentence) or _HEDGE.search(sentence):
        return None
    if role == "assistant" and _ASSISTANT_PLAN.search(sentence):
        return None
    if _VAGUE_REFERENCE.search(sentence):
        return None
    if _REQUEST.search(sentence) and not _STANDING.search(sentence):
        return None  # a task for this session, not a standing rule
    for kind, pattern, weight, roles in RULES:
        if role in roles and pattern.search(sentence):
            if kind == "fix" and _FAILED_FIX.search(sentence):
                return None
            if kind in ("decision", "preference") and _VAGUE_OBJECT.search(sentence):
                return None
            if kind == "fact" and _TRANSIENT.search(sentence):
                return None
            return kind, weight
    return None


def _self_contained(sentences: list[str], index: int) -> str | None:
    """The sentence, with a neighbour if it is too short alone or opens with a pronoun; None if no such text
    fits in 30-400 characters."""
    sentence = sentences[index]
    if len(sentence) > MAX_CHARS:
        return None
    needs_context = (
        len(sentence) < MIN_CHARS
        or _PRONOUN_START.search(sentence) is not None
        or _SUBJECTLESS_FIX.search(sentence) is not None
    )
    if not needs_context:
        return sentence
    before = sentences[index - 1] if index > 0 else None
    if before is not None and not before.endswith("?") and len(before) + 1 + len(sentence) <= MAX_CHARS:
        return f"{before} {sentence}"
    after = sentences[index + 1] if index + 1 < len(sentences) else None
    if len(sentence) < MIN_CHARS and after is not None and not after.endswith("?"):
        joined = f"{sentence} {after}"
        return joined if len(joined) <= MAX_CHARS else None
    return sentence if len(sentence) >= MIN_CHARS else None


def _safe(text: str) -> str | None:
    """The text with secrets redacted; None if one is still found (also once URL-decoded), or if what is left is
    mostly markers."""
    text = " ".join(strip_private(text).split())
    redacted = redact(text)
    clean = " ".join(redacted.text.split())
    if redacted.kinds and redact(clean).kinds:
        return None
    if "%" in clean and (decoded := unquote(clean)) != clean and redact(decoded).kinds:
        return None  # postgres%3A%2F%2Fapp%3Apassword%40db: a secret URL-encoded
    if _REDACTION.search(clean):
        markers = sum(len(m) for m in _REDACTION.findall(clean))
        if markers * 2 > len(clean) or len(_REDACTION.sub("", clean).strip()) < MIN_CHARS:
            return None
    if not MIN_CHARS <= len(clean) <= MAX_CHARS:
        return None
    return clean


def _bonus(text: str) -> float:
    """Small, fixed extras: a reason given, a named alternative, a named thing (code, a path, a version)."""
    bonus = 0.0
    if re.search(r"\b(?:because|since|so that|as it|due to)\b", text, re.IGNORECASE):
        bonus += 0.3
    if re.search(r"\b(?:instead of|rather than|over|not)\b", text, re.IGNORECASE):
        bonus += 0.2
    if re.search(r"`[^`]+`|\b\w+[./]\w+|\d", text):
        bonus += 0.2
    if len(text) > 250:
        bonus -= 0.3
    return bonus
