"""Input validation: every check on what a caller hands us, in one place.

Everything passes through here before it reaches a backend or the embedder, so one place decides what a
namespace, a tag, an id, a time or a metadata value may be.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime

from .model import MetadataValue

MAX_NAMESPACE_CHARS = 128
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 4096
MAX_LIMIT = 100
MAX_IDS = 1000
MAX_ID_CHARS = 64

# Letters, digits and a few separators; no slashes, backslashes, NUL or whitespace, so a namespace can
# never be read as a path or smuggle anything into a log line. Matched with fullmatch: `$` would accept a
# trailing newline.
_NAMESPACE_RE = re.compile(r"[^\W][\w.:@+-]*", re.UNICODE)


class InvalidInput(ValueError):
    """Input the caller can fix: the message says what is wrong and what is allowed."""


def check_text_chars(value: str, what: str) -> None:
    """No NUL character, and valid Unicode (no unpaired surrogate): what every stored string must be."""
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} is not valid Unicode (unpaired surrogate at {exc.start})") from None


def validate_namespace(namespace: object) -> str:
    if not isinstance(namespace, str):
        raise InvalidInput("namespace must be a string")
    check_text_chars(namespace, "namespace")
    if not namespace:
        raise InvalidInput("namespace must not be empty")
    if len(namespace) > MAX_NAMESPACE_CHARS:
        raise InvalidInput(f"namespace is longer than {MAX_NAMESPACE_CHARS} characters")
    if ".." in namespace or not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidInput(
            f"invalid namespace {namespace!r}: use letters, digits and . _ - : @ +, starting with a letter or "
            "digit; no slashes, spaces or '..'"
        )
    return namespace


def validate_text(text: object, max_bytes: int) -> str:
    if not isinstance(text, str):
        raise InvalidInput("text must be a string")
    check_text_chars(text, "text")
    if not text.strip():
        raise InvalidInput("text must not be empty")
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidInput(f"text is {size} bytes; the limit is {max_bytes} bytes")
    return text


def validate_query(query: object, max_bytes: int) -> str:
    if not isinstance(query, str):
        raise InvalidInput("query must be a string")
    check_text_chars(query, "query")
    if not query.strip():
        raise InvalidInput("query must not be empty")
    size = len(query.encode("utf-8"))
    if size > max_bytes:
        raise InvalidInput(f"query is {size} bytes; the limit is {max_bytes} bytes")
    return query


def validate_tags(tags: Iterable[object] | None) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
        raise InvalidInput("tags must be a list of strings")
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise InvalidInput("each tag must be a string")
        check_text_chars(tag, "a tag")
        tag = tag.strip()
        if not tag:
            raise InvalidInput("tags must not be empty strings")
        if len(tag) > MAX_TAG_CHARS:
            raise InvalidInput(f"tag {tag[:20]!r}... is longer than {MAX_TAG_CHARS} characters")
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags are allowed, got {len(out)}")
    return out


def validate_importance(importance: object) -> float:
    if isinstance(importance, bool) or not isinstance(importance, int | float):
        raise InvalidInput("importance must be a number between 0 and 1")
    value = float(importance)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"importance must be between 0 and 1, got {importance}")
    return value


def validate_positive_days(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name} must be a positive number of days")
    days = float(value)
    if not math.isfinite(days) or days <= 0 or days > 365_000:
        raise InvalidInput(f"{name} must be a positive number of days (at most 365000), got {value}")
    return days


def validate_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be from 1 to {MAX_LIMIT}, got {limit}")
    return limit


def validate_metadata(metadata: object) -> dict[str, MetadataValue]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput("metadata must be a flat JSON object")
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(f"metadata may have at most {MAX_METADATA_KEYS} keys")
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidInput("metadata keys must be non-empty strings")
        check_text_chars(key, "a metadata key")
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise InvalidInput(f"metadata key {key[:20]!r}... is longer than {MAX_METADATA_KEY_CHARS} characters")
        if isinstance(value, bool | int):
            if not isinstance(value, bool) and abs(value) > 2**63 - 1:
                raise InvalidInput(f"metadata value for {key!r} is out of the 64-bit integer range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidInput(f"metadata value for {key!r} must be a finite number")
        elif isinstance(value, str):
            check_text_chars(value, f"metadata value for {key!r}")
            if len(value) > MAX_METADATA_VALUE_CHARS:
                raise InvalidInput(f"metadata value for {key!r} is longer than {MAX_METADATA_VALUE_CHARS} characters")
        else:
            raise InvalidInput(
                f"metadata value for {key!r} must be a string, number or boolean (metadata is flat), "
                f"got {type(value).__name__}"
            )
        out[key] = value
    return out


def validate_ids(ids: object, name: str = "ids") -> list[str]:
    """A list of memory ids, duplicates dropped, order kept."""
    if ids is None:
        return []
    if isinstance(ids, str) or not isinstance(ids, list | tuple):
        raise InvalidInput(f"{name} must be a list of memory ids")
    if len(ids) > MAX_IDS:
        raise InvalidInput(f"at most {MAX_IDS} {name} per call, got {len(ids)}")
    for memory_id in ids:
        if not isinstance(memory_id, str) or not memory_id or len(memory_id) > MAX_ID_CHARS or "\x00" in memory_id:
            raise InvalidInput(f"{name}: not a memory id: {str(memory_id)[:70]!r}")
    return list(dict.fromkeys(ids))


def parse_time(value: object, name: str, *, end_of_day: bool = False) -> float | None:
    """An ISO 8601 date or date-time (UTC if no offset), a datetime, or epoch seconds.

    A date alone means the start of that day (UTC), or with end_of_day the last instant of it, so
    `until="2026-01-31"` covers all of January 31st.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidInput(f"{name} must be a finite time")
        return float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if end_of_day and _is_date_only(text):
                dt = dt.replace(hour=23, minute=59, second=59, microsecond=999_999)
        except (ValueError, OverflowError):
            raise InvalidInput(
                f"{name} must be an ISO 8601 date or date-time from year 1 to 9999, e.g. 2026-01-31T12:00:00Z"
            ) from None
    else:
        raise InvalidInput(f"{name} must be an ISO 8601 date or date-time string")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.timestamp()
    except (ValueError, OverflowError):
        raise InvalidInput(f"{name} is out of range") from None


def _is_date_only(text: str) -> bool:
    """A calendar, week or ordinal date with no time ("2026-01-31", "20260131", "2026-W05-6")."""
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


# --- what an import may store: values every later read (export, recall, the CLI, the UI) can handle --------

EARLIEST_TIME = datetime(1, 1, 1, tzinfo=UTC).timestamp()
"""0001-01-01T00:00:00Z as epoch seconds: the first instant a datetime (and so every time shown) can hold."""
LATEST_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
"""9999-12-31T23:59:59Z: the last whole second a datetime can hold. Not a fraction later: near year 9999 a
float has ~30 microseconds of precision, and 23:59:59.999999 rounds up into year 10000."""
MAX_ACCESS_COUNT = 2**53 - 1
"""Leaves recalls room to count on without overflowing a 64-bit integer (PostgreSQL's BIGINT)."""


def validate_stored_time(value: object, name: str) -> float | None:
    """A time an import may store: parse_time's forms, from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z
    (the range a datetime can show: export, recall, list, show and the UI format every stored time)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        raise InvalidInput(f"{name} is out of range: use a time from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z")
    when = parse_time(value, name)
    if when is not None and not EARLIEST_TIME <= when <= LATEST_TIME:
        raise InvalidInput(f"{name} is out of range: use a time from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z")
    return when


def validate_stored_id(value: object, name: str) -> str:
    """A memory id an import may store: what validate_ids takes, and also valid Unicode with no control
    characters (an id is shown in tables and typed as an argument), and not '.' or '..' (the UI's links)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    [memory_id] = validate_ids([value], name)
    check_text_chars(memory_id, name)
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in memory_id) or memory_id != memory_id.strip():
        raise InvalidInput(f"{name} {memory_id!r} has control characters or surrounding spaces")
    if memory_id in (".", ".."):  # a URL path resolves these away: the UI could never open that memory
        raise InvalidInput(f"{name} {memory_id!r} is not a memory id ('.' and '..' are path segments)")
    return memory_id


def validate_access_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ACCESS_COUNT:
        raise InvalidInput(f"access_count must be a whole number from 0 to {MAX_ACCESS_COUNT}")
    return value
