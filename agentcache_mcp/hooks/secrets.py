"""What transcript capture must never store: text inside `<private>` tags, and secrets.

`strip_private(text)` removes every `<private>...</private>` span (tags in any case, with or without attributes,
across lines, several per text, nested: the span ends at the matching close; full-width `＜private＞` and
HTML-escaped `&lt;private&gt;` count too). An unclosed `<private>` hides
everything after it, and so does a `<private` missing its `>` (the tag ends at the next `<` or with the text). A
`</private>` with no open tag is dropped and hides nothing; `<private/>` hides nothing.
`strip_private_from(text, depth)` carries an unclosed span over a sequence of texts (a session's messages): a
`<private>` left open in one message hides the next ones until a `</private>` closes it.

`redact(text)` replaces each secret it finds by `[redacted <kind>]` and says which kinds it found;
`contains_secret(text)` is `bool(redact(text).kinds)`; `scrub(text)` is `redact(strip_private(text))`.
Pure stdlib and regular expressions, no network, no model. Rules run in the order below, so a value a specific rule
redacts is not redacted again by a generic one; any value that is already `[redacted ...]` is left alone.

Redacted (kind: what):
- `private-key`: a PEM private key (`-----BEGIN ... PRIVATE KEY-----` of any type: RSA, EC, DSA, OPENSSH, ENCRYPTED,
  PGP `PRIVATE KEY BLOCK`) through its END line; a block without END (truncated) is redacted to the end of the text.
- `aws-access-key-id`: `AKIA` / `ASIA` / `ABIA` / `ACCA` + 16 upper-case letters or digits.
- `aws-secret-key`: a 40-character key after a name that says AWS and secret (`aws_secret_access_key = ...`).
- `github-token`: `ghp_` `gho_` `ghu_` `ghs_` `ghr_` + 36 or more letters or digits; `github_pat_...`.
- `gitlab-token`: `glpat-`, `gldt-`, `glrt-`, `glptt-`, `glft-`, `glsoat-` + 20 or more characters.
- `slack-token`: `xoxa-` `xoxb-` `xoxp-` `xoxr-` `xoxs-` `xoxe-`, `xapp-`; `slack-webhook`: the whole
  `https://hooks.slack.com/services|workflows|triggers/...` URL; `discord-webhook`: the same for Discord's.
- `stripe-key`: `sk_live_` `sk_test_` `rk_live_` `rk_test_` + 10 or more characters, and `whsec_` webhook secrets.
  Publishable keys (`pk_live_`, `pk_test_`) are public by design and kept.
- `anthropic-key`: `sk-ant-...`; `openai-key`: `sk-`, `sk-proj-`, `sk-svcacct-`, `sk-admin-` + 20 or more
  characters including a digit.
- `google-api-key`: `AIza` + 35 characters; `google-oauth-token`: `ya29.` + 20 or more characters.
- `huggingface-token`: `hf_` + 30 or more letters; `npm-token`: `npm_` + 36; `pypi-token`: `pypi-` + 50 or more.
- `sendgrid-key`: `SG.<16-32>.<16-64>`; `twilio-key`: `SK` + 32 hex digits; `telegram-bot-token`: `<digits>:<35>`;
  `digitalocean-token`: `dop_v1_` / `doo_v1_` + 64 hex digits; `shopify-token`: `shpat_` `shpss_` `shpca_` `shppa_`.
- `token-fragment`: what is left of one of the prefixes above (`ghp_`, `xoxb-`, `sk_live_`, `sk-ant-`, `AIza`, `AKIA`,
  ...) when the token is cut short or split across lines: the prefix with 6 or more characters, or the prefix, what
  follows it on its line and the first word of the next line (`ghp_NqVw` / `YS81VP7H...`).
- `jwt`: three dot-separated base64url parts, the first two starting `eyJ` (a JSON object).
- `connection-string`: the password of `scheme://user:password@host` for any scheme (postgres, mysql, mongodb+srv,
  redis, amqp, https, ...). The scheme, user, host, port, path and query stay: `postgres://app:[redacted
  connection-string]@db:5432/app`. A URL without a password is kept.
- `authorization`: the credential of an `Authorization:` / `Proxy-Authorization:` header or assignment (with its
  scheme word `Bearer`, `Basic`, `Token`, ... kept); `bearer-token`: `Bearer <16 or more token characters>` anywhere.
- `env-secret` / `password`: a `.env` or shell line (optionally `export NAME=`) whose upper-case name ends in
  `_KEY`, `SECRET`, `TOKEN`, `PASSWORD`, `PASSWD`, `_PASS`, `_PWD`, `_CREDENTIALS`, `_APIKEY`, `PASSPHRASE` or
  `_SALT`, or has one of these followed by `_BASE`, `_PROD`, `_DEV`, `_TEST`, `_LIVE`, `_STAGING`, `_OLD`, `_NEW`,
  `_PRIMARY`, `_SECONDARY`, `_VALUE`, `_RAW` or a number (`SECRET_KEY_BASE`, `API_KEY_2`; the same suffixes count
  in the assignments below) (names with `PUBLIC` or `PUBLISHABLE` are kept); the value to the end of the word or the quotes. `password`
  when the name says pass/pwd (`PGPASSWORD=...`, `MYSQL_PWD=...`).
- `password` / `secret-assignment`: in code, config, JSON, YAML or a URL query, a value assigned (`=`, `:`, `:=`,
  `=>`) to a name ending in `password`, `passwd`, `passphrase`, `_pwd`, `_pass`, `secret`, `token`, `api_key` /
  `apikey` / `api-key`, `access_key`, `secret_key`, `private_key` (any case, any prefix: `db_password`,
  `"clientSecret"`, `X-Auth-Token:`, `?access_token=`); and `--password X`, `--password=X`, `--token X`, `--api-key X`
  ... on a command line. Not redacted as values: placeholders and references (`$VAR`, `${VAR}`, `<password>`,
  `{{ secret }}`, `***`, `xxx`, `...`, `changeme`, `None`, `null`, `true`, `false`), type names in annotations
  (`token: str`, `password: Optional[str]`), expressions (`os.environ["X"]`, `getpass()`), dotted names
  (`settings.password`) and a name repeated as its own value (`token=token`). Names that only contain a keyword are
  not secrets: `max_tokens=1024`, `tokenizer: bert`, `password_min_length=12`, `--password-stdin`.
  An assignment inside an escaped JSON string, as a log or a JSON-in-JSON field prints it (`{\\"password\\":
  \\"x\\"}`), counts the same.
- `password` / `secret-assignment` in prose: a password, passphrase, secret, token, credential or API / access /
  private / signing / deploy key named and then given with `is`, `was`, `will be`, `has been`, `is now`, ... or `to`
  (`the staging db password is X`, `the token for CI was X`, `I changed the root password to X`), up to five words
  between (`for the admin account`). The value is redacted if it is quoted (`"correct horse battery staple"`,
  `` `x` ``) or is one word of 6 or more characters with a letter and a digit or symbol (`hunter2`, `Adm1n#`):
  `the password is wrong`, `the token is 1024 characters`, `the password is in 1Password` are kept.
- `password`: what is glued to `-p` on a `mysql`, `mysqldump`, `mysqladmin`, `mariadb` ... command line
  (`mysql -uroot -pS3cret`); a bare `-p`, which prompts, is kept.
- `high-entropy`: a run of 32 or more characters of `A-Z a-z 0-9 + / = _ -` that looks random: at least 3.5 bits of
  Shannon entropy per character, and at least 30 % of neighbouring characters change class (lower, upper, digit,
  other). Measured on random base64 and alphanumeric strings of 32-64 characters, every one passes both; on the
  32-plus-character runs in this project's virtualenv (identifiers, paths, test names), camelCase and snake_case
  words switch class every 4-10 characters (well under 30 %) and are kept.

Kept (judgement calls, each tested both ways):
- Runs made only of hex digits and dashes: git commit SHAs, UUIDs, sha1/sha256 digests, docker image ids. A bare
  hex secret is therefore redacted only in context (an assignment or `.env` line as above, or a provider prefix).
- Digests labelled as such (`sha256:...`, `sha512-...` integrity strings, `md5=`), base64 or hex.
- File paths, identifiers, URLs without a password, version numbers, e-mail addresses, short numbers.
- The word "password" or "token" in prose ("the password must have 12 characters", "rotate the token").

Not covered (say so rather than pretend): secrets without a recognisable shape, context or entropy (a password
that is an ordinary word, or stated without its name: `log in with hunter2`), a password containing a space outside
quotes (only its first word is redacted), values split across lines other than PEM blocks and provider tokens, and secrets longer than 400 characters in an
unquoted assignment. Callers that keep only part of a text must redact the whole text before cutting it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Redacted", "contains_secret", "redact", "scrub", "strip_private", "strip_private_from"]


@dataclass(frozen=True)
class Redacted:
    """A text with its secrets replaced by `[redacted <kind>]`, and the kinds found (first-found order, no repeats)."""

    text: str
    kinds: tuple[str, ...] = ()


# ---- <private> ---------------------------------------------------------------------------------------------------

_LT, _GT = r"(?:<|＜|&lt;)", r"(?:>|＞|&gt;)"  # also full-width (an IME's) and HTML-escaped (pasted) brackets
_PRIVATE_TAG = re.compile(
    rf"{_LT}\s*([/／]?)\s*private(?=[\s/／]|{_GT}|\Z)(?:(?!{_LT}|{_GT}).)*(?:{_GT}|(?={_LT})|\Z)",
    re.IGNORECASE | re.DOTALL,
)
"""A tag that lacks its `>` (`<private the key is ...`) ends where the next tag starts, or with the text: still a tag."""


def strip_private(text: str) -> str:
    """`text` without its `<private>...</private>` spans (see the module docstring)."""
    return strip_private_from(text)[0]


def strip_private_from(text: str, depth: int = 0) -> tuple[str, int]:
    """`strip_private` for one text of a sequence (a session's messages): `depth` is how many `<private>` spans
    the texts before it left open (its start is hidden until they close); returns what is kept and how many this
    text leaves open for the next."""
    if "<" not in text and "＜" not in text and "&lt;" not in text.lower():
        return ("" if depth else text), depth
    kept: list[str] = []
    pos = 0
    for tag in _PRIVATE_TAG.finditer(text):
        if depth == 0:
            kept.append(text[pos : tag.start()])
        pos = tag.end()
        if tag.group(1):  # a close: ends one level, or is stray and dropped
            depth = max(depth - 1, 0)
        elif not re.search(rf"[/／]\s*{_GT}\Z", tag.group(0), re.IGNORECASE):  # an open (<private/> hides nothing)
            depth += 1
    if depth == 0:
        kept.append(text[pos:])
    return "".join(kept), depth


# ---- secrets ------------------------------------------------------------------------------------------------------

_MARK = "[redacted "


def _mark(kind: str) -> str:
    return f"{_MARK}{kind}]"


_PLACEHOLDER = re.compile(
    r"""
    \$\{?[A-Za-z_][A-Za-z0-9_]*\}?           # $VAR, ${VAR}
    | \$\{\{?[^}]*\}\}?                      # ${{ secrets.X }}
    | <[^<>]*> | \{\{[^{}]*\}\} | \{[A-Za-z_][A-Za-z0-9_.]*\} | %\([A-Za-z_]\w*\)s | %s
    | [*x.•…Xx-]+                            # ***, xxxx, ..., ----
    | (?:none|null|nil|undefined|true|false|yes|no|on|off|empty|redacted|hidden|secret|password|changeme|change_me
         |your[_-][A-Za-z_-]*|example|dummy|placeholder|todo|required|optional|str|string|bytes|int|bool|any
         |secretstr)
    """,
    re.IGNORECASE | re.VERBOSE,
)
_REFERENCE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+|.*[(\[].*")
_NAME_IN_VALUE = re.compile(r"(?i)(?:[a-z]+_)*(?:password|passwd|pass|pwd|secret|token|key)(?:_[a-z]+)*")


def _is_placeholder(value: str, quoted: bool) -> bool:
    if not value or value.startswith(_MARK):
        return True
    if _PLACEHOLDER.fullmatch(value):
        return True
    # unquoted: a reference to where the value lives, not the value (settings.password, os.environ["X"], token=token)
    return not quoted and bool(_REFERENCE.fullmatch(value) or _NAME_IN_VALUE.fullmatch(value))


def _value_span(match: re.Match[str]) -> tuple[int, int, bool] | None:
    """The span of a rule's value group `v` (quotes excluded), and whether it was quoted; None if it is no secret."""
    start, end = match.span("v")
    value = match.group("v")
    escaped = len(value) >= 4 and value[0] == value[-2] == "\\" and value[1] == value[-1] and value[1] in "\"'"
    quoted = escaped or (len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`")
    code = quoted and value[0] == "`"  # `settings.api_key` in backticks is code, a reference like an unquoted one
    if quoted:
        cut = 2 if escaped else 1
        start, end, value = start + cut, end - cut, value[cut:-cut]
    if _is_placeholder(value.strip(), quoted and not code):
        return None
    return start, end, quoted


_HEX_RUN = re.compile(r"(?:0x)?[0-9A-Fa-f-]+")
_HEX_PIECE = re.compile(r"(?:0x|g)?(?:[0-9a-f]{7,}|[0-9A-F]{7,})|[0-9]+")
_PIECE_SEPARATORS = re.compile(r"[/+=_.-]")
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_DIGEST_LABEL = re.compile(r"(?i)(?:sha1|sha224|sha256|sha384|sha512|sha3-\d+|md5|blake2b?|digest|integrity)[-:=\"' ]*$")


def _looks_random(run: str) -> bool:
    """The high-entropy rule (thresholds and their measurement in the module docstring)."""
    if _HEX_RUN.fullmatch(run):
        return False
    # hex and number pieces (a commit or digest in a URL path, a version) are not what makes a run random
    core = "".join(p for p in _PIECE_SEPARATORS.split(run) if p and not _HEX_PIECE.fullmatch(p))
    n = len(core)
    if n < 24:
        return False
    entropy = -sum(c / n * math.log2(c / n) for c in Counter(core).values())
    if entropy < 3.5:
        return False
    word_length = n / len(_WORD.findall(core))
    digits = sum(c.isdigit() for c in core) / n
    return word_length <= 2.6 or (digits >= 0.2 and word_length <= 3.6)


@dataclass(frozen=True)
class _Rule:
    kind: str | Callable[[re.Match[str]], str]
    pattern: re.Pattern[str]
    # whole: the whole match is the secret; value: the group `v` (placeholders skipped); check: an extra test
    whole: bool = True
    check: Callable[[re.Match[str]], bool] | None = None


def _password_or(kind: str) -> Callable[[re.Match[str]], str]:
    def choose(match: re.Match[str]) -> str:
        return "password" if re.search(r"(?i)pass|pwd", match.group("n")) else kind

    return choose


def _not_public(match: re.Match[str]) -> bool:
    return not re.search(r"PUBLIC|PUBLISHABLE", match.group("n"))


def _high_entropy(match: re.Match[str]) -> bool:
    run = match.group(0)
    before = match.string[max(0, match.start() - 16) : match.start()]
    return _looks_random(run) and not _DIGEST_LABEL.search(before)


_B = r"(?<![A-Za-z0-9_])"  # no word character before
_E = r"(?![A-Za-z0-9_])"  # no word character after
# a value: quoted, or up to a space, quote, `,` `;` `)` `}` `]`, or an `&` that starts the next `name=` of a query
# (a value inside an escaped JSON string, `{\\"password\\": \\"x\\"}` as a log prints it, keeps its backslashes)
_VALUE = (
    r"""(?P<v>\\"[^"\n]{1,400}?\\"|\\'[^'\n]{1,400}?\\'|"[^"\n]{1,400}"|'[^'\n]{1,400}'"""
    r"""|[^\s"'`=,;&)}\]](?:[^\s"'`,;&)}\]]|&(?![A-Za-z_][\w.-]*=)){0,399})"""
)
# a secret stated in prose: `the staging password is X`, `the token for CI was X`, `changed the password to X`
_PROSE_NAME = (
    r"(?P<n>password|passwd|passphrase|passcode|pwd|secret|token|apikey|credentials?"
    r"|(?:api|access|secret|private|auth|signing|deploy|license|encryption|master)[ _-]?key)"
)
_PROSE_LINK = (
    r"(?:[ \t]+(?:for|of|on|to|in|at|from)(?:[ \t]+[^\s.,;:!?]+){1,5}?)?"  # for the admin account
    r"(?:[ \t]+(?:is|was|are|were|will[ \t]+be|has[ \t]+been|became|remains)"
    r"(?:[ \t]+(?:now|still|just|currently|actually|always))?(?:[ \t]+(?:set|changed)[ \t]+to)?[ \t]*:?"
    r"|[ \t]+to)[ \t]+"
)
_TOKEN_CHARS = r"[^\s\"'`,;()<>\[\]{}]"
# quoted, or one word with a letter and a digit or symbol (`hunter2`, not `wrong`, `1024` or `in`)
_PROSE_VALUE = (
    r"(?P<v>\"[^\"\n]{4,200}\"|'[^'\n]{4,200}'|`[^`\n]{4,200}`"
    rf"|(?={_TOKEN_CHARS}*[A-Za-z])(?={_TOKEN_CHARS}*[0-9!@#$%^&*+=~|]){_TOKEN_CHARS}{{6,200}}?(?=[.:!?]*(?!{_TOKEN_CHARS})))"
)

_NAME_SUFFIX = r"(?i:[_.-](?:base|prod|production|dev|development|test|live|staging|old|new|primary|secondary|value|raw|v?\d{1,3}))*"
"""What may follow a secret's keyword in its name (`SECRET_KEY_BASE`, `API_KEY_2`, `db_password_prod`); other
suffixes say the value is about the secret, not the secret (`TOKEN_TTL`, `SECRET_KEY_FILE`, `PASSWORD_MIN_LENGTH`)."""

_RULES: tuple[_Rule, ...] = (
    _Rule(
        "private-key",
        re.compile(
            r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|[\s\S]*\Z)"
        ),
    ),
    _Rule("aws-access-key-id", re.compile(_B + r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}" + _E)),
    _Rule(
        "aws-secret-key",
        re.compile(
            r"(?i)aws[A-Za-z0-9_.-]{0,30}?secret[A-Za-z0-9_.-]{0,20}[\"']?\s*(?:=>|:=|[:=])\s*[\"']?"
            r"(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
        ),
        whole=False,
    ),
    _Rule("github-token", re.compile(_B + r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})" + _E)),
    _Rule("gitlab-token", re.compile(_B + r"gl(?:pat|dt|rt|ptt|ft|soat|cbt|oas)-[A-Za-z0-9_-]{20,255}" + _E)),
    _Rule(
        "slack-webhook",
        re.compile(r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]+"),
    ),
    _Rule("slack-token", re.compile(_B + r"(?:xox[abprse]-[A-Za-z0-9-]{10,255}|xapp-\d-[A-Za-z0-9-]{10,255})")),
    _Rule(
        "discord-webhook",
        re.compile(r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_-]+"),
    ),
    _Rule("stripe-key", re.compile(_B + r"(?:[sr]k_(?:live|test)_[A-Za-z0-9]{10,255}|whsec_[A-Za-z0-9+/=]{20,255})")),
    _Rule("anthropic-key", re.compile(_B + r"sk-ant-[A-Za-z0-9_-]{20,255}")),
    _Rule(
        "openai-key",
        re.compile(_B + r"sk-(?:proj-|svcacct-|admin-)?(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_-]{20,255}" + _E),
    ),
    _Rule("google-api-key", re.compile(_B + r"AIza[0-9A-Za-z_-]{35}" + r"(?![A-Za-z0-9_-])")),
    _Rule("google-oauth-token", re.compile(_B + r"ya29\.[0-9A-Za-z_-]{20,}")),
    _Rule("huggingface-token", re.compile(_B + r"(?:hf_|api_org_)[A-Za-z]{30,}" + _E)),
    _Rule("npm-token", re.compile(_B + r"npm_[A-Za-z0-9]{36}" + _E)),
    _Rule("pypi-token", re.compile(_B + r"pypi-[A-Za-z0-9_-]{50,}")),
    _Rule("sendgrid-key", re.compile(_B + r"SG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,64}" + r"(?![A-Za-z0-9_-])")),
    _Rule("twilio-key", re.compile(_B + r"SK[0-9a-fA-F]{32}" + _E)),
    _Rule("telegram-bot-token", re.compile(_B + r"[0-9]{8,10}:AA[A-Za-z0-9_-]{33}" + r"(?![A-Za-z0-9_-])")),
    _Rule("digitalocean-token", re.compile(_B + r"do[opr]_v1_[a-f0-9]{64}" + _E)),
    _Rule("shopify-token", re.compile(_B + r"shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}" + _E)),
    _Rule(
        "token-fragment",
        re.compile(
            r"(?<![A-Za-z0-9_.-])(?:gh[pousr]_|github_pat_|gl(?:pat|dt|rt|ptt|ft|soat)-|xox[abprse]-|xapp-|[sr]k_(?:live|test)_"
            r"|whsec_|sk-ant-|sk-(?:proj|svcacct|admin)-|AIza|ya29\.|do[opr]_v1_|shp(?:at|ss|ca|pa)_|AKIA|ASIA)"
            r"(?:[A-Za-z0-9_.-]*[ \t]*\r?\n[ \t]*[A-Za-z0-9_+/=-]{6,}|[A-Za-z0-9_-]{6,})"
        ),
    ),
    _Rule("jwt", re.compile(_B + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),
    _Rule(
        "connection-string",
        re.compile(r"(?i)\b[a-z][a-z0-9+.-]{1,30}://[^\s:/@?#'\"<>]*:(?P<v>[^\s/?#'\"<>]+)@(?=[A-Za-z0-9\[])"),
        whole=False,
    ),
    _Rule(
        "authorization",
        re.compile(
            r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest|bot|apikey|otp)\s+)?"
            r"(?P<v>[^\s\"',;]{4,})"
        ),
        whole=False,
    ),
    _Rule(
        _password_or("env-secret"),
        re.compile(
            r"(?m)^[ \t]*(?:export[ \t]+)?(?P<n>[A-Z][A-Z0-9_]*(?:_KEY|SECRET|TOKEN|PASSWORD|PASSWD|_PASS|_PWD|_CREDENTIALS"
            r"|_APIKEY|PASSPHRASE|_SALT)" + _NAME_SUFFIX + r")[ \t]*=[ \t]*(?P<v>\"[^\"\n]*\"|'[^'\n]*'|[^\s#]+)"
        ),
        whole=False,
        check=_not_public,
    ),
    _Rule(
        _password_or("secret-assignment"),
        re.compile(
            r"(?i)(?<![A-Za-z0-9_.-])(?P<n>[A-Za-z0-9_.-]{0,60}?(?:password|passwd|passphrase|[_.-]pwd|[_.-]pass|secret"
            r"|token|api[_-]?key|access[_-]?key|secret[_-]?key|private[_-]?key)" + _NAME_SUFFIX + r")(?![A-Za-z0-9_-])"
            r"(?:\\?[\"'])?[ \t]*(?:=>|:=|[:=])[ \t]*" + _VALUE
        ),
        whole=False,
    ),
    _Rule(
        _password_or("secret-assignment"),
        re.compile(
            r"(?i)(?<![A-Za-z0-9_-])(?P<n>--?[A-Za-z0-9-]{0,40}?(?:password|passwd|passphrase|secret|token|api-?key"
            r"|access-key|secret-key))(?![A-Za-z0-9_-])[ \t]+" + _VALUE
        ),
        whole=False,
    ),
    _Rule(_password_or("secret-assignment"), re.compile(r"(?i)(?<![A-Za-z0-9_-])" + _PROSE_NAME + _PROSE_LINK + _PROSE_VALUE), whole=False),
    _Rule(
        "password",
        re.compile(
            r"(?<![\w-])(?i:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mysqlshow|mariadb(?:-dump|-admin)?)"
            r"(?![\w-])[^\n|;&]{0,200}?[ \t]-p(?P<v>\"[^\"\n]{1,200}\"|'[^'\n]{1,200}'|[^\s\"'`]{1,200})"
        ),
        whole=False,
    ),
    _Rule("bearer-token", re.compile(r"(?i)\bbearer[ \t]+(?P<v>[A-Za-z0-9._~+/-]{16,}=*)"), whole=False),
    _Rule(
        "high-entropy",
        re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/=_-]{32,}(?![A-Za-z0-9+/=_-])"),
        check=_high_entropy,
    ),
)


def _apply(rule: _Rule, text: str, found: list[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if rule.check is not None and not rule.check(match):
            return whole
        kind = rule.kind if isinstance(rule.kind, str) else rule.kind(match)
        if rule.whole:
            start, end = match.span()
        else:
            span = _value_span(match)
            if span is None:
                return whole
            start, end, _ = span
        if kind not in found:
            found.append(kind)
        offset = match.start()
        return whole[: start - offset] + _mark(kind) + whole[end - offset :]

    return rule.pattern.sub(replace, text)


def redact(text: str) -> Redacted:
    """`text` with every secret the rules find replaced by `[redacted <kind>]` (see the module docstring)."""
    found: list[str] = []
    for rule in _RULES:
        text = _apply(rule, text, found)
    return Redacted(text, tuple(found))


def contains_secret(text: str) -> bool:
    """Whether `redact` would change `text`."""
    return bool(redact(text).kinds)


def scrub(text: str) -> Redacted:
    """`redact(strip_private(text))`: what capture may keep of a text."""
    return redact(strip_private(text))
