"""What transcript capture must never store: `<private>` spans and secrets (agentcache_mcp.hooks.secrets)."""

from __future__ import annotations

import base64
import random
import string
import subprocess
import sys

import pytest
from secret_samples import KINDS, SAMPLES, Sample

from agentcache_mcp.hooks.secrets import Redacted, contains_secret, redact, scrub, strip_private

# ---- <private> ----------------------------------------------------------------------------------------------------


def test_strip_private_removes_a_span_and_keeps_the_rest() -> None:
    assert strip_private("keep <private>hide me</private> this") == "keep  this"


def test_strip_private_matches_tags_in_any_case_and_across_lines() -> None:
    text = "a\n<PRIVATE>line one\nline two</Private>\nb"
    assert strip_private(text) == "a\n\nb"


def test_strip_private_removes_several_spans() -> None:
    assert strip_private("1<private>x</private>2<private>y</private>3") == "123"


def test_strip_private_ends_a_nested_span_at_its_matching_close() -> None:
    text = "a<private>b<private>c</private>d</private>e"
    assert strip_private(text) == "ae"


def test_an_unclosed_private_tag_hides_everything_after_it() -> None:
    assert strip_private("shown <private>hidden\nand this too") == "shown "


def test_an_unclosed_nested_private_tag_hides_everything_after_it() -> None:
    assert strip_private("a<private>b<private>c</private>d") == "a"


def test_a_stray_closing_private_tag_hides_nothing() -> None:
    assert strip_private("before </private> after") == "before  after"


def test_private_tags_with_attributes_and_spaces_count() -> None:
    assert strip_private('x< private reason="pw" >y</ private >z') == "xz"


def test_a_self_closing_private_tag_hides_nothing() -> None:
    assert strip_private("a<private/>b") == "ab"


def test_tags_that_only_start_with_private_are_kept() -> None:
    text = "<privateer>ship</privateer> and <private-notes>x</private-notes>"
    assert strip_private(text) == text


def test_strip_private_leaves_text_without_tags_unchanged() -> None:
    text = "if a < b and c > d: return <b>bold</b>"
    assert strip_private(text) == text


# ---- every planted kind -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"{i}-{s.kind}" for i, s in enumerate(SAMPLES)])
def test_redact_removes_each_planted_secret_and_names_its_kind(sample: Sample) -> None:
    result = redact(sample.text)
    assert sample.secret not in result.text
    assert sample.kind in result.kinds
    assert f"[redacted {sample.kind}]" in result.text
    assert contains_secret(sample.text)


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"{i}-{s.kind}" for i, s in enumerate(SAMPLES)])
def test_no_eight_character_piece_of_a_planted_secret_survives(sample: Sample) -> None:
    result = redact(sample.text).text
    pieces = {sample.secret[i : i + 8] for i in range(len(sample.secret) - 7)}
    leaked = [p for p in pieces if p in result and p not in sample.text.replace(sample.secret, "")]
    assert not leaked


def test_the_samples_cover_every_kind_the_issue_names() -> None:
    named = {
        "aws-access-key-id", "aws-secret-key", "github-token", "gitlab-token", "slack-token", "slack-webhook",
        "stripe-key", "openai-key", "anthropic-key", "google-api-key", "huggingface-token", "npm-token", "pypi-token",
        "sendgrid-key", "twilio-key", "jwt", "private-key", "password", "connection-string", "env-secret",
        "authorization", "high-entropy",
    }  # fmt: skip
    assert named <= KINDS


def test_a_text_with_several_secrets_has_them_all_redacted_and_all_kinds_listed_once() -> None:
    picked = [s for s in SAMPLES if s.kind in {"github-token", "connection-string", "jwt", "private-key", "password"}]
    picked.sort(key=lambda s: s.kind == "private-key")  # last: the truncated key hides everything after it
    text = "\n\n".join(s.text for s in picked) + "\n" + picked[0].text
    result = redact(text)
    for s in picked:
        assert s.secret not in result.text
    assert len(result.kinds) == len(set(result.kinds))
    assert set(result.kinds) == {"github-token", "connection-string", "jwt", "private-key", "password"}


def test_a_secret_is_redacted_once_by_the_most_specific_rule() -> None:
    token = next(s.secret for s in SAMPLES if s.kind == "github-token")
    result = redact(f"GITHUB_TOKEN={token}")
    assert result == Redacted("GITHUB_TOKEN=[redacted github-token]", ("github-token",))


def test_a_pem_key_is_redacted_from_begin_to_end_and_the_text_after_it_stays() -> None:
    key = next(s.secret for s in SAMPLES if s.kind == "private-key")
    result = redact(f"before\n{key}\nafter the key")
    assert result.text == "before\n[redacted private-key]\nafter the key"


def test_a_connection_string_keeps_its_scheme_user_and_host() -> None:
    assert redact("postgresql://app:s3cretPw@db.example.com:5432/app?sslmode=require").text == (
        "postgresql://app:[redacted connection-string]@db.example.com:5432/app?sslmode=require"
    )


def test_a_password_with_an_at_sign_in_a_connection_string_is_redacted_whole() -> None:
    result = redact("mysql://root:p@ss@w0rd@db/shop")
    assert "ss" not in result.text.split("@db")[0].split("root:")[1].replace("[redacted connection-string]", "")
    assert result.text == "mysql://root:[redacted connection-string]@db/shop"


def test_a_password_with_an_ampersand_is_redacted_whole() -> None:
    assert redact("password=Tr0ub&dor").text == "password=[redacted password]"


def test_a_query_string_password_stops_at_the_next_parameter() -> None:
    assert redact("https://x.example/login?user=a&password=abc123&next=%2F").text == (
        "https://x.example/login?user=a&password=[redacted password]&next=%2F"
    )


@pytest.mark.parametrize(
    "text",
    [
        "password: hunter2isMyPw",
        "PASSWORD = 'correct horse battery staple'",
        'db.connect(host="db", password="s3cr3t!")',
        "config.password = 'Sup3rS3cret'",
        "mysql --password=Sup3rS3cret shop",
        "psql --password 'Sup3rS3cret'",
        "smtp_pass: Sup3rS3cret",
        "MYSQL_PWD=Sup3rS3cret mysql shop",
        "client_secret: Sup3rS3cretValue",
        '{"apiKey": "abc123def456"}',
        "X-Auth-Token: abc123def456",
        "curl 'https://api.example.com/v1?access_token=abc123def456'",
        "export OPENWEATHER_API_KEY=abc123def456",
    ],
)
def test_assignments_of_secret_names_are_redacted(text: str) -> None:
    result = redact(text)
    assert result.kinds, text
    assert "3cr" not in result.text and "abc123def456" not in result.text and "hunter2" not in result.text
    assert "horse battery" not in result.text


# ---- false positives: ordinary text stays --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Fixed in commit 3c8cccc9a1f0d2b7e4c5a6b8d9e0f1a2b3c4d5e6, see git show 3c8cccc.",
        "memory id 0b6e7a32-4c1d-4e8f-9a2b-5d6c7e8f9a0b was forgotten",
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "integrity sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==",
        "docker image sha256 digest 4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1",
        "edit agentcache_mcp/hooks/secrets.py and tests/test_hooks_secrets_false_positives_module.py",
        "/work/main/.venv/lib/python3.11/site-packages/mcp/server/mcpserver/server.py line 120",
        "see https://github.com/anthropics/claude-code/issues/12345#issuecomment-987654321",
        "https://user@example.com/path is fine, and so is ssh://git@github.com:22/acme/widgets.git",
        "upgraded from 3.47.0 to 3.50.2 (sqlean.py), torch 2.5.1+cpu",
        "def test_import_refuses_a_vector_of_another_dimension_when_the_store_is_empty(): pass",
        "class AbstractSingletonProxyFactoryBeanWithRetries2Impl: ...",
        "The password must have at least 12 characters; rotate the token every 90 days.",
        "max_tokens=1024, tokenizer: bert-base-uncased, password_min_length=12",
        "def connect(password: str | None = None, token: Optional[str] = None) -> None:",
        "password = os.environ['DB_PASSWORD']; token = settings.api_token",
        "login(user=user, password=password, token=token)",
        "PASSWORD=${DB_PASSWORD} and TOKEN=$GITHUB_TOKEN and api_key=<your-api-key> and secret: '***'",
        "docker login --password-stdin < token.txt",
        "email me at ada.lovelace@example.com",
        "pk_live_ and pk_test_ keys are publishable",
        "STRIPE_PUBLISHABLE_KEY=pk_test_12345abcde",
        "the session id is 4f1c2d9e8b7a6f5e4d3c2b1a0f9e8d7c",
        "Authorization header is required",
        "sk-learn and scikit-learn are different spellings",
        "CHUNK_SIZE=4096 and PRIMARY_COLOR=blue",
    ],
)
def test_ordinary_text_is_not_redacted(text: str) -> None:
    result = redact(text)
    assert result == Redacted(text, ()), result
    assert not contains_secret(text)


def test_high_entropy_rule_catches_random_strings() -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    caught = 0
    for _ in range(200):
        value = base64.b64encode(rng.randbytes(36)).decode()[:40]
        caught += contains_secret(f"value {value} end")
        value = "".join(rng.choice(alphabet) for _ in range(40))
        caught += contains_secret(f"value {value} end")
    assert caught >= 0.95 * 400


# ---- the interface -------------------------------------------------------------------------------------------------


def test_redact_of_text_without_secrets_returns_it_unchanged_with_no_kinds() -> None:
    assert redact("nothing to see") == Redacted("nothing to see", ())
    assert redact("") == Redacted("", ())


def test_redact_is_idempotent() -> None:
    text = "\n".join(s.text for s in SAMPLES)
    once = redact(text)
    assert redact(once.text) == Redacted(once.text, ())


def test_scrub_strips_private_spans_before_redacting() -> None:
    token = next(s.secret for s in SAMPLES if s.kind == "github-token")
    result = scrub(f"keep <private>my secret plan</private> and {token}")
    assert result == Redacted("keep  and [redacted github-token]", ("github-token",))


def test_importing_the_module_pulls_in_nothing_heavy() -> None:
    code = "import sys, agentcache_mcp.hooks.secrets; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "{'mcp', 'pydantic', 'torch', 'sentence_transformers', 'numpy'}))"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ---- review of issue 21: shapes the first rules missed -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("We decided the staging database password is Tr0ub4dor&3horse for everyone.", "Tr0ub4dor&3horse"),
        ("Our staging db password is Xk9pLmQ2vR7t and it lives in vault.", "Xk9pLmQ2vR7t"),
        ("Our CI token is EpSfZB9KQprdFSpdTmYs4x4geAXuyW and it is rotated monthly.", "EpSfZB9KQprdFSpdTmYs4x4geAXuyW"),
        ('The wifi password is "correct horse battery staple" for the office.', "horse battery"),
        ("The password for the admin account is hunter2!", "hunter2"),
        ("the api key for the billing service was sk9Ld0Qp2xZ.", "sk9Ld0Qp2xZ"),
        ("the password to the admin panel is now Adm1nPanel#", "Adm1nPanel#"),
        ("I changed the root password to Sup3rS3cret yesterday.", "Sup3rS3cret"),
        ("My GitHub token is `gh0Tok3nValue99` for CI.", "gh0Tok3nValue99"),
        ("(the password is hunter22) and the deploy key was 'Dk-4471-x'", "hunter22"),
        ("Staging: the password is Xy9!wq.Lm2, for now.", "Lm2"),
    ],
)
def test_a_secret_stated_in_prose_after_is_is_redacted(text: str, secret: str) -> None:
    result = redact(text)
    assert secret not in result.text, result
    assert result.kinds


@pytest.mark.parametrize(
    "text",
    [
        "The password is wrong, and the token is expired.",
        "The token is stored in vault and the password is in 1Password.",
        "The secret is to cache the embeddings before the first recall.",
        "The token is 1024 characters long at most.",
        "the password is the same as last time",
        "The api key is required for every call.",
        "The password is $DB_PASSWORD from the environment.",
        "The fix was to set the api key to `settings.billing_api_key` and the token to `None`.",
        "The secret is `SECRET_KEY` in the settings module.",
    ],
)
def test_prose_about_a_password_or_token_without_one_is_kept(text: str) -> None:
    assert redact(text) == Redacted(text, ())


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('the log showed {\\"password\\": \\"Tr0ub4dor&3horse\\", \\"user\\": \\"app\\"}', "Tr0ub4dor"),
        ("payload was '{\\\"client_secret\\\":\\\"Sup3rS3cretValue\\\"}'", "Sup3rS3cret"),
        ("env: {\\'api_key\\': \\'abc123def456\\'}", "abc123def456"),
    ],
)
def test_an_assignment_inside_an_escaped_json_string_is_redacted(text: str, secret: str) -> None:
    result = redact(text)
    assert secret not in result.text, result
    assert result.kinds


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("We always connect with mysql -uroot -pS3cretPw99 to the prod db.", "S3cretPw99"),
        ("mysqldump -h db -u app -p'Tr0ub4dor&3' shop > shop.sql", "Tr0ub4dor"),
        ("mariadb --user=app -pHunter22 shop", "Hunter22"),
    ],
)
def test_a_password_glued_to_mysqls_p_flag_is_redacted(text: str, secret: str) -> None:
    result = redact(text)
    assert secret not in result.text, result
    assert "password" in result.kinds


def test_mysqls_bare_p_flag_which_prompts_for_the_password_is_kept() -> None:
    text = "mysql -u root -p shop and ssh -p 2222 host and mkdir -p build"
    assert redact(text) == Redacted(text, ())


def test_a_private_tag_missing_its_closing_bracket_still_hides_what_follows() -> None:
    assert strip_private("We chose Go. <private the vault key is Hunter22") == "We chose Go. "
    assert strip_private("We chose Go. <private\nthe vault key is Hunter22\n</private> and Rust.") == "We chose Go.  and Rust."
    assert strip_private("a <private>b</private") == "a "


def test_a_private_span_left_open_carries_over_to_the_next_texts() -> None:
    from agentcache_mcp.hooks.secrets import strip_private_from

    assert strip_private_from("keep <private>hide", 0) == ("keep ", 1)
    assert strip_private_from("hidden too", 1) == ("", 1)
    assert strip_private_from("hidden</private> shown", 1) == (" shown", 0)


@pytest.mark.parametrize(
    "text",
    [
        "We chose Go. ＜private＞the vault key is Hunter22＜／private＞ And Rust.",  # a full-width IME's brackets
        "We chose Go. ＜private＞the vault key is Hunter22＜/private＞ And Rust.",
        "We chose Go. &lt;private&gt;the vault key is Hunter22&lt;/private&gt; And Rust.",  # pasted from HTML
    ],
)
def test_private_tags_written_with_full_width_or_html_escaped_brackets_count(text: str) -> None:
    assert strip_private(text) == "We chose Go.  And Rust."


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("SECRET_KEY_BASE=" + "9f86d081884c7d659a2feaa0c55ad015" * 4, "9f86d081884c7d65"),  # Rails: 128 hex digits
        ("export API_KEY_2=abc123def456", "abc123def456"),
        ("STRIPE_SECRET_LIVE='whatever123'", "whatever123"),
        ("db_password_prod: Tr0ub4dorHorse", "Tr0ub4dor"),
        ("GITHUB_TOKEN_OLD=abcdef0123456789abcdef0123456789abcdef01", "abcdef0123456789"),
    ],
)
def test_a_secret_name_with_a_suffix_after_its_keyword_is_still_a_secret_name(text: str, secret: str) -> None:
    result = redact(text)
    assert secret not in result.text, result


@pytest.mark.parametrize(
    "text", ["TOKEN_TTL=3600", "SECRET_KEY_FILE=/run/secrets/app", "PASSWORD_MIN_LENGTH=12", "API_KEY_HEADER=X-Api-Key"]
)
def test_settings_about_a_secret_are_not_secrets(text: str) -> None:
    assert redact(text) == Redacted(text, ())
