"""Same facts: what two texts must share for the auto-forget sweep to count them as near-duplicates.

A sentence model scores "dentist on Tuesday at 3pm" and "dentist on Thursday at 10am" 0.96 alike: it reads
the topic, and a day, a time, an amount, a key or a name is one token of many (and it reads only the first
256 word pieces of a text). So a high cosine is not enough: the two texts must also state the same facts,
compared here without any model, as two sets that must be equal:

- exact: numbers with their unit (the next word, a glued suffix or a currency: '$45,000' = '45000 dollars',
  '2 adults and 3 children' is not '3 adults and 2 children'), times ('3pm' = '3 p.m.' = '15:00'), dates
  ('March 12' = '12 March'), weekdays and months (in a few languages), seasons, parts of the day, relative
  days, frequencies, the words before/after/next/last, identifiers (any word with a digit, an underscore, a
  slash or @, or an inner dot or colon: keys, ids, hashes, versions, paths, host names; with their case,
  since keys and passwords are case-sensitive), e-mail addresses, URLs, and negation (not, never, n't...).
- words: every other word, case and accents aside ('Núñez' = 'NUNEZ'), without function words and filler
  ('please note that', 'I think', 'FYI').
- symbols: check marks, emoji, stars ('tests: ✅' / 'tests: ❌' score 1.000 alike: the model reads none).
- contrasts: the short words that set a direction, a position, an obligation, a quantity, a person or a
  connective ('to' / 'from', 'in' / 'out', 'on' / 'off' / 'under', 'above' / 'below', 'up' / 'down',
  'should' / 'must', 'all' / 'some', 'he' / 'she', 'my' / 'your', 'and' / 'or').
  Function words, but where both texts use one of a kind they must use the same ones ('flying to Paris' is
  not 'flying from Paris', 0.986 alike); one left out is a paraphrase ('the meeting is on Tuesday' =
  'meeting: Tuesday'), 'each' = 'every', and a pronoun counts as its person ('he ... his').

What this lets through on purpose: case, punctuation, spacing, word order, filler, and numbers written
another way. What it cannot see: swapped roles ("Alice owes Bob" / "Bob owes Alice"; "Mia is 8, Noah is 5"
/ "Mia is 5, Noah is 8"). What it gives up: paraphrases in other words ("prefers" / "likes"), which the
cosine alone would merge. Every pattern here is linear in the text (no nested repetition).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SalientFacts", "facts_agree", "salient_facts", "same_facts"]


@dataclass(frozen=True, slots=True)
class SalientFacts:
    exact: frozenset[str]
    """Numbers with units, times, dates, time words, identifiers, e-mails, URLs, negation, letter pairs of
    scripts without case: compared as values ('3pm' = '15:00', '$45,000' = '45000 dollars')."""
    words: frozenset[str]
    """Every other word, case and accents aside, without function words and filler."""
    contrasts: frozenset[tuple[str, str]] = frozenset()
    """(kind, word) of the direction, position, obligation, quantity, person and connective words (CONTRASTS)."""


def same_facts(a: str, b: str) -> bool:
    """Do the two texts state the same facts (see the module docstring)?"""
    return facts_agree(salient_facts(a), salient_facts(b))


def facts_agree(a: SalientFacts, b: SalientFacts) -> bool:
    return a.exact == b.exact and a.words == b.words and _contrasts_agree(a.contrasts, b.contrasts)


def _contrasts_agree(a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]) -> bool:
    """Of each kind both texts use, the same words; a kind only one text uses is a paraphrase."""
    both = {kind for kind, _ in a} & {kind for kind, _ in b}
    return {c for c in a if c[0] in both} == {c for c in b if c[0] in both}


def _words(text: str) -> list[str]:
    return text.split()


def _fold(word: str) -> str:
    """Case and accents aside: 'Núñez' and 'NUNEZ' are one name."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


WEEKDAYS = {
    # English (and "Mondays"), German, French, Spanish, Italian, Portuguese, Dutch.
    1: "monday mondays mon montag lundi lunes lunedi segunda maandag",
    2: "tuesday tuesdays tue tues dienstag mardi martes martedi terca dinsdag",
    3: "wednesday wednesdays mittwoch mercredi miercoles mercoledi quarta woensdag",
    4: "thursday thursdays thu thur thurs donnerstag jeudi jueves giovedi quinta donderdag",
    5: "friday fridays fri freitag vendredi viernes venerdi sexta vrijdag",
    6: "saturday saturdays samstag sonnabend samedi sabado sabato zaterdag",
    7: "sunday sundays sonntag dimanche domingo domenica zondag",
}
MONTHS = {
    1: "january jan januar janvier enero gennaio janeiro januari",
    2: "february feb februar fevrier febrero febbraio fevereiro februari",
    3: "march mar marz mars marzo marco maart",
    4: "april apr avril abril aprile",
    5: "may mai mayo maggio maio mei",
    6: "june jun juni juin junio giugno junho",
    7: "july jul juli juillet julio luglio julho",
    8: "august aug aout agosto augustus",
    9: "september sep sept septembre septiembre settembre setembro",
    10: "october oct oktober octobre octubre ottobre outubro",
    11: "november nov novembre noviembre novembro",
    12: "december dec dezember decembre diciembre dicembre dezembro",
}
RUSSIAN_STEMS = {
    # Inflected, so matched by the start of the (folded) word.
    "понедельник": "weekday:1",
    "вторник": "weekday:2",
    "четверг": "weekday:4",
    "пятниц": "weekday:5",
    "суббот": "weekday:6",
    "воскресень": "weekday:7",
    "январ": "month:01",
    "феврал": "month:02",
    "апрел": "month:04",
    "июн": "month:06",
    "июл": "month:07",
    "август": "month:08",
    "сентябр": "month:09",
    "октябр": "month:10",
    "ноябр": "month:11",
    "декабр": "month:12",
}
RUSSIAN_FORMS = {
    **dict.fromkeys(_words("среда среду среды среде средам средой"), "weekday:3"),
    **dict.fromkeys(_words("март марта марте"), "month:03"),
    **dict.fromkeys(_words("май мая мае"), "month:05"),
}
TIME_WORDS: dict[str, str] = {
    **{w: f"weekday:{n}" for n, names in WEEKDAYS.items() for w in names.split()},
    **{w: f"month:{n:02d}" for n, names in MONTHS.items() for w in names.split()},
    **{_fold(w): fact for w, fact in RUSSIAN_FORMS.items()},
    **dict.fromkeys(["spring"], "season:spring"),
    **dict.fromkeys(["summer"], "season:summer"),
    **dict.fromkeys(["autumn"], "season:autumn"),
    **dict.fromkeys(["winter"], "season:winter"),
    **dict.fromkeys(["morning", "mornings"], "daypart:morning"),
    **dict.fromkeys(["afternoon", "afternoons"], "daypart:afternoon"),
    **dict.fromkeys(["evening", "evenings"], "daypart:evening"),
    **dict.fromkeys(["night", "nights"], "daypart:night"),
    **dict.fromkeys(["weekend", "weekends"], "day:weekend"),
    "tonight": "day:tonight",
    "today": "day:today",
    "tomorrow": "day:tomorrow",
    "yesterday": "day:yesterday",
    "hourly": "every:hour",
    "daily": "every:day",
    "nightly": "every:night",
    "weekly": "every:week",
    "fortnightly": "every:fortnight",
    "monthly": "every:month",
    "quarterly": "every:quarter",
    "yearly": "every:year",
    "annually": "every:year",
    "annual": "every:year",
    "before": "when:before",
    "after": "when:after",
    "until": "when:until",
    "since": "when:since",
    "ago": "when:ago",
    "next": "when:next",
    "last": "when:last",
    "previous": "when:last",
    "earlier": "when:earlier",
    "later": "when:later",
    "noon": "time:12:00",
    "midday": "time:12:00",
    "midnight": "time:00:00",
}
NEEDS_A_CAPITAL = frozenset(_words("mar march may jun sep oct dec aug august mon fri mars mai sexta quinta quarta"))
"""Also common words, or too short to trust: a month or weekday only with a capital (or, for a month, next
to a day number: 'mar 12')."""
CAPITALISED_ONLY = {"sat": "weekday:6", "sun": "weekday:7", "wed": "weekday:3"}
NUMBER_WORDS: dict[str, tuple[str, str | None]] = {
    **{
        w: (str(n), None)
        for n, w in enumerate(
            _words(
                "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty"
            )
        )
    },
    **{w: (str(10 * n), None) for n, w in enumerate(_words("thirty forty fifty sixty seventy eighty ninety"), 3)},
    "hundred": ("100", None),
    "thousand": ("1000", None),
    "million": ("1000000", None),
    "billion": ("1000000000", None),
    "dozen": ("12", None),
    "half": ("0.5", None),
    "once": ("1", "time"),
    "twice": ("2", "time"),
    "thrice": ("3", "time"),
    **{w: (str(n), None) for n, w in enumerate(_words("first _ third fourth fifth sixth seventh eighth ninth tenth"), 1)},
}
CURRENCIES = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr"}
UNIT_WORDS = {
    **dict.fromkeys(["dollar", "dollars", "usd", "bucks"], "usd"),
    **dict.fromkeys(["euro", "euros", "eur"], "eur"),
    **dict.fromkeys(["pound", "pounds", "gbp", "quid"], "gbp"),
    **dict.fromkeys(["yen", "jpy"], "jpy"),
    **dict.fromkeys(["rupee", "rupees", "inr"], "inr"),
    **dict.fromkeys(["percent", "pct", "%"], "%"),
}
MONEY = frozenset(UNIT_WORDS.values()) - {"%"}
NEGATIONS = frozenset(
    _words(
        "not no never none nobody nothing neither nor cannot without nowhere "
        "nicht kein keine keinen keiner nie niemals pas jamais aucun nunca nada не нет никогда"
    )
)
STOPWORDS = frozenset(
    _words("""a an the and or but if then so as at by for from in into of off on onto out over to up with about
    this that these those it its is are was were be been being am do does did done have has had having
    i me my mine we our ours you your yours he him his she her hers they them their there here what which
    who whom whose when where why how all any both each every some such only own same than too very can
    could will would shall should may might must let also just still even again ok okay yes hi hey well
    above across against along among around behind below beneath beside besides between beyond despite down
    during except inside like near outside past per plus through throughout till toward towards under
    underneath unlike upon via within""")
)
CONTRASTS = {
    **dict.fromkeys(_words("to toward towards from"), "direction"),
    **dict.fromkeys(
        _words("in inside into within out outside on onto off over above under underneath beneath below behind beside near"),
        "position",
    ),
    **dict.fromkeys(_words("up down"), "level"),
    **dict.fromkeys(_words("can could should must may might will would shall"), "modal"),
    **dict.fromkeys(_words("all some any both only every each"), "quantity"),
    **dict.fromkeys(_words("and or"), "connective"),
    **{w: "person" for w in _words("i me my mine we us our ours you your yours he him his she her hers they them their theirs")},
}
PERSONS = {
    **dict.fromkeys(_words("i me my mine"), "i"),
    **dict.fromkeys(_words("we us our ours"), "we"),
    **dict.fromkeys(_words("you your yours"), "you"),
    **dict.fromkeys(_words("he him his"), "he"),
    **dict.fromkeys(_words("she her hers"), "she"),
    **dict.fromkeys(_words("they them their theirs"), "they"),
}
"""A pronoun counts as its person: 'he ... his' is one person."""
"""Function words (in STOPWORDS) that still state a fact: see _contrasts_agree."""
FILLERS = frozenset(
    _words("""please note noted notes fyi btw reminder remember remind important tip heads headsup apparently
    basically actually really fun fact checking noting keep mind seems seem think believe guess recall
    correctly know knew forget record reference context usual sure anyway anyways honestly maybe probably
    said says told""")
)
"""Words that say how a fact is told, not what it is: not a name even when capitalised ('Note:', 'FYI')."""
NOT_UNITS = STOPWORDS | FILLERS | TIME_WORDS.keys()
"""Words never read as the unit of the number before them ('at 3 please', '5 tomorrow'). The word after a
number is its unit ('2 adults and 3 children' is not '3 adults and 2 children') only in the Latin script,
where these lists can tell a unit from a preposition."""

QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'", "−": "-"})
URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`]+|\bwww\.[^\s<>\"'`]+", re.IGNORECASE)
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
FILLER_PHRASES = re.compile(
    r"\b(?:don't|dont|do not|never) forget(?: that)?\b|\bnot to forget\b|\b(?:keep|bear) in mind\b", re.IGNORECASE
)
AM_PM = re.compile(r"(\d)\s*([ap])\.?\s?m\b\.?", re.IGNORECASE)
"""'3 p.m.', '3 PM' -> '3pm', before the text is cut into chunks."""
GLUE_SYMBOL = re.compile(r"(\d)\s*([%°])")
CHUNK = re.compile(r"\S+")
EDGE_PUNCTUATION = "\"'`.,;:!?()[]{}<>«»…*"
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
TIME_12 = re.compile(r"(\d{1,2})(?:[:.](\d{2}))?([ap])m")
TIME_24 = re.compile(r"(\d{1,2})[:h](\d{2})(?:h|uhr)?")
TIME_H = re.compile(r"(\d{1,2})h")
DATE_ISO = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
DATE_NUMERIC = re.compile(r"(\d{1,2})([/.])(\d{1,2})\2(\d{2,4})")
THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")
ORDINAL = re.compile(r"(\d+)(?:st|nd|rd|th|er|e|eme|º|ª)")
GLUED_UNIT = re.compile(r"(\d+(?:\.\d+)?)([^\W\d_]{1,4}|%|°)")
HYPHENATED_UNIT = re.compile(r"(\d+(?:\.\d+)?)-([^\W\d_]+)")
INNER_DOT = re.compile(r"\w[.:]\w\w")


def _number(digits: str) -> str:
    """'45,000' and '45000' are one amount. Every other digit stays: '0417' is not '417', '3.10' not '3.1'."""
    return digits.replace(",", "") if THOUSANDS.fullmatch(digits) else digits


def _amount(number: str, unit: str | None) -> str:
    if unit in MONEY and "." in number:  # $45.00 = $45, 84.20 pounds = £84.2
        number = number.rstrip("0").rstrip(".")
    return f"{number} {unit}" if unit else number


def _unit(word: str) -> str:
    word = _fold(word)
    if word in UNIT_WORDS:
        return UNIT_WORDS[word]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _time(hour: int, minute: int) -> str | None:
    return f"time:{hour:02d}:{minute:02d}" if hour < 24 and minute < 60 else None


def _numeric(core: str) -> tuple[str, str | None] | None:
    """A chunk that is only a number (with a unit glued to it, or None), a time or a date; None for anything
    else (an identifier, a word)."""
    low = core.casefold()
    if not low[:1].isdigit():
        if low[:1] in "+-−#№" and len(low) > 1:
            inner = _numeric(low[1:])
            return ("-" + inner[0] if low[0] in "-−" else inner[0], inner[1]) if inner else None
        if low[:1] in CURRENCIES and len(low) > 1:
            inner = _numeric(low[1:])
            return (inner[0], CURRENCIES[low[0]]) if inner and inner[1] is None else None
        return None
    if m := TIME_12.fullmatch(low):
        hour = int(m[1])
        fact = _time(hour % 12 + (12 if m[3] == "p" else 0), int(m[2] or 0)) if 1 <= hour <= 12 else None
        return (fact, None) if fact else None
    if m := TIME_24.fullmatch(low):
        fact = _time(int(m[1]), int(m[2]))
        return (fact, None) if fact else None
    if (m := TIME_H.fullmatch(low)) and int(m[1]) < 24:
        return f"time:{int(m[1]):02d}:00", None
    if m := DATE_ISO.fullmatch(low):
        return f"date:{m[1]}-{int(m[2]):02d}-{int(m[3]):02d}", None
    if m := DATE_NUMERIC.fullmatch(low):
        return f"date:{int(m[1]):02d}/{int(m[3]):02d}/{m[4]}", None
    if THOUSANDS.fullmatch(low) or PLAIN_NUMBER.fullmatch(low):
        return _number(low), None
    if m := ORDINAL.fullmatch(low):
        return m[1], None
    if m := GLUED_UNIT.fullmatch(low) or HYPHENATED_UNIT.fullmatch(low):
        return m[1], _unit(m[2])
    return None


def _is_identifier(core: str) -> bool:
    """A key, id, hash, version, path or host: any digit, underscore, slash or @, or an inner dot or colon
    with two letters after it (file.py, example.com; not 'e.g')."""
    return (
        any(c.isdigit() or c in "_/\\@" for c in core)
        or INNER_DOT.search(core) is not None
    )


def _time_word(part: str, low: str) -> str | None:
    if low in CAPITALISED_ONLY:
        return CAPITALISED_ONLY[low] if part[:1].isupper() else None
    fact = TIME_WORDS.get(low)
    if fact is None:
        fact = next((f for stem, f in RUSSIAN_STEMS.items() if low.startswith(stem)), None)
    if fact and low in NEEDS_A_CAPITAL and not part[:1].isupper():
        return None
    return fact


def _month_next_to(chunks: list[str], i: int) -> tuple[int, str] | None:
    """The month a day number belongs to: 'March 12', '12 March', '12th of March', 'mar 12'."""
    for j in (i - 1, i + 1, i + 2):
        if not 0 <= j < len(chunks) or (j == i + 2 and chunks[i + 1].casefold() != "of"):
            continue
        low = _fold(chunks[j].rstrip("."))
        fact = TIME_WORDS.get(low) or next((f for s, f in RUSSIAN_STEMS.items() if low.startswith(s)), None)
        if fact and fact.startswith("month:"):
            return j, fact
    return None


def salient_facts(text: str) -> SalientFacts:
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(QUOTES)
    exact: set[str] = set()
    words: set[str] = set()
    contrasts: set[tuple[str, str]] = set()

    def take(kind: str, fold: bool) -> Callable[[re.Match[str]], str]:
        def keep(m: re.Match[str]) -> str:
            found = m.group(0).rstrip(".,;:!?)]}'\"")
            exact.add(f"{kind}:{found.casefold() if fold else found.rstrip('/')}")
            return " " * len(m.group(0))

        return keep

    work = URL.sub(take("url", False), text)
    work = EMAIL.sub(take("email", True), work)
    work = FILLER_PHRASES.sub(" ", work)
    work = AM_PM.sub(r"\1\2m", work)
    work = GLUE_SYMBOL.sub(r"\1\2", work)

    # Chunks between spaces, outer punctuation trimmed; `apart[i]`: punctuation follows chunk i, so the next
    # chunk is not its unit ("apartment 12, on the 4th floor").
    chunks: list[str] = []
    apart: list[bool] = []
    for m in CHUNK.finditer(work):
        raw = m.group(0)
        core = raw.strip(EDGE_PUNCTUATION)
        if apart and raw[:1] in EDGE_PUNCTUATION:
            apart[-1] = True
        if core:
            chunks.append(core)
            apart.append(raw[-1:] in EDGE_PUNCTUATION)

    consumed: set[int] = set()  # chunks already read: a month as part of a date, a word as a number's unit
    for i, core in enumerate(chunks):
        if i in consumed:
            continue
        low = core.casefold()
        numeric = _numeric(core) or NUMBER_WORDS.get(low)
        if numeric is not None:
            fact, unit = numeric
            if fact.startswith(("time:", "date:")):
                exact.add(fact)
                continue
            day = unit is None and fact.isdigit() and len(fact) <= 2 and 1 <= int(fact) <= 31
            month = _month_next_to(chunks, i) if day else None
            if month is not None:
                j, month_fact = month
                exact.add(f"date:{month_fact[len('month:') :]}-{int(fact):02d}")
                if j < i:  # already read as a month alone ('March'), or as a word ('mar')
                    exact.discard(month_fact)  # (a later 'March' alone adds it again)
                    words.discard(_fold(chunks[j].rstrip(".")))
                consumed.add(j)
                continue
            if unit is None and not apart[i] and i + 1 < len(chunks):
                following = chunks[i + 1]
                if WORD.fullmatch(following) and following.isascii() and _fold(following) not in NOT_UNITS:
                    unit = _unit(following)
                    consumed.add(i + 1)
            exact.add(_amount(fact, unit))
            continue
        if _is_identifier(core):
            exact.add(f"id:{core}")
            continue
        for part in WORD.findall(core):
            _read_word(part, exact, words, contrasts)
        if symbols := "".join(c for c in core if unicodedata.category(c) == "So"):
            exact.add(f"symbol:{symbols}")  # ✅ / ❌, emoji, ★★: the model reads none of them

    return SalientFacts(frozenset(exact), frozenset(words), frozenset(contrasts))


def _read_word(part: str, exact: set[str], words: set[str], contrasts: set[tuple[str, str]]) -> None:
    low = _fold(part)
    if low in NEGATIONS or low.endswith("n't"):
        exact.add("negation")
        return
    fact = _time_word(part, low)
    if fact:
        exact.add(fact)
        return
    if low in CONTRASTS:
        contrasts.add((CONTRASTS[low], "every" if low == "each" else PERSONS.get(low, low)))
        return
    base = low.split("'")[0]  # the user's = the user
    if low not in STOPWORDS and base not in STOPWORDS and low not in FILLERS:
        words.add(base)
