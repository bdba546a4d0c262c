"""Planted secrets of every kind `agentcache_mcp.hooks.secrets.redact` filters, for any test that must prove absence.

Each `Sample` has the kind `redact` reports, a realistic text containing the secret, and the secret substring that must
not survive. The values are fake and built at runtime from parts (a fixed pseudo-random generator, `_fake`), so this
file holds no literal in a real token format that a secret scanner (GitHub push protection, gitleaks) would flag.

    from secret_samples import SAMPLES
    for sample in SAMPLES:
        store(sample.text)
        assert sample.secret not in everything_written
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

_RNG = random.Random(21)
_ALNUM = string.ascii_letters + string.digits


def _fake(alphabet: str, n: int) -> str:
    """n characters of `alphabet`, from a fixed seed: random-looking, the same on every run."""
    return "".join(_RNG.choice(alphabet) for _ in range(n))


def _b64url(n: int) -> str:
    return _fake(_ALNUM + "-_", n)


@dataclass(frozen=True)
class Sample:
    kind: str
    text: str
    secret: str


def _j(*parts: str) -> str:
    return "".join(parts)


_AWS_ID = _j("AK", "IA", _fake(string.ascii_uppercase + string.digits, 16))
_AWS_SECRET = _fake(_ALNUM + "/+", 40)
_GHP = _j("gh", "p_", _fake(_ALNUM, 36))
_GHO = _j("gh", "o_", _fake(_ALNUM, 36))
_GHU = _j("gh", "u_", _fake(_ALNUM, 36))
_GHS = _j("gh", "s_", _fake(_ALNUM, 36))
_GHR = _j("gh", "r_", _fake(_ALNUM, 36))
_GH_PAT = _j("github", "_pat_", _fake(_ALNUM, 22), "_", _fake(_ALNUM, 59))
_GLPAT = _j("gl", "pat-", _fake(_ALNUM + "_-", 20))
_XOXB = _j("xo", "xb-", _fake(string.digits, 12), "-", _fake(string.digits, 13), "-", _fake(_ALNUM, 24))
_XOXP = _j("xo", "xp-", _fake(string.digits, 12), "-", _fake(string.digits, 12), "-", _fake(string.digits, 13), "-",
           _fake("0123456789abcdef", 32))  # fmt: skip
_SLACK_HOOK = _j("https://hooks.", "slack.com/services/T", _fake(string.ascii_uppercase + string.digits, 8), "/B",
                 _fake(string.ascii_uppercase + string.digits, 10), "/", _fake(_ALNUM, 24))  # fmt: skip
_DISCORD_HOOK = _j("https://discord.com/api/", "webhooks/", _fake(string.digits, 18), "/", _b64url(68))
_SK_LIVE = _j("sk", "_live_", _fake(_ALNUM, 24))
_RK_LIVE = _j("rk", "_live_", _fake(_ALNUM, 24))
_SK_TEST = _j("sk", "_test_", _fake(_ALNUM, 24))
_WHSEC = _j("wh", "sec_", _fake(_ALNUM, 32))
_OPENAI = _j("sk", "-", _fake(_ALNUM, 20), "T3Blbk", "FJ", _fake(_ALNUM, 20))
_OPENAI_PROJ = _j("sk", "-proj-", _b64url(120))
_ANTHROPIC = _j("sk", "-ant-api03-", _b64url(93), "AA")
_GOOGLE = _j("AI", "za", "Sy", _fake(_ALNUM + "_-", 33))
_YA29 = _j("ya", "29.", _b64url(60))
_HF = _j("h", "f_", _fake(string.ascii_letters, 34))
_NPM = _j("np", "m_", _fake(_ALNUM, 36))
_PYPI = _j("py", "pi-", "AgEIcHlwaS5vcmc", _b64url(60))
_SENDGRID = _j("S", "G.", _b64url(22), ".", _b64url(43))
_TWILIO = _j("S", "K", _fake("0123456789abcdef", 32))
_TELEGRAM = _j(_fake(string.digits, 10), ":A", "A", _b64url(33))
_DO = _j("do", "p_v1_", _fake("0123456789abcdef", 64))
_SHOPIFY = _j("shp", "at_", _fake("0123456789abcdef", 32))
_JWT = _j("ey", "JhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", ".", "ey", "JzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFkYSJ9", ".",
          _b64url(43))  # fmt: skip
_PEM_BODY = "\n".join(_fake(_ALNUM + "+/", 64) for _ in range(4))
_RSA = _j("-----BEGIN RSA ", "PRIVATE KEY-----\n", _PEM_BODY, "\n-----END RSA ", "PRIVATE KEY-----")
_OPENSSH = _j("-----BEGIN OPENSSH ", "PRIVATE KEY-----\n", "b3BlbnNzaC1rZXktdjEAAAAA", _PEM_BODY,
              "\n-----END OPENSSH ", "PRIVATE KEY-----")  # fmt: skip
_PKCS8_TRUNCATED = _j("-----BEGIN ", "PRIVATE KEY-----\n", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", _PEM_BODY[:150])
_DB_PASSWORD = _j("Tr0ub4", "dor&3-", "horse")
_PG_PASSWORD = _j("pg", "Secr3t", "Pass")
_MONGO_PASSWORD = _j("m0ng", "0Pw")
_REDIS_PASSWORD = _j("r3d", "isPa55")
_AMQP_PASSWORD = _j("rabb", "1tPw")
_HTTPS_PASSWORD = _j("hunt", "er2", "Pass")
_PROSE_PASSWORD = _j("Wh1te", "Rabbit", "#42")
_ENV_KEY = _fake(_ALNUM, 28)
_ENV_SECRET = _fake("0123456789abcdef", 40)
_ENV_TOKEN = _fake(_ALNUM, 32)
_BEARER = _b64url(40)
_BASIC = "dXNlcjpzM2NyM3RQYXNz"  # base64 of "user:s3cr3tPass"
_ENTROPY = _fake(_ALNUM + "+/", 48)

SAMPLES: tuple[Sample, ...] = (
    Sample("aws-access-key-id", f"The deploy role uses key id {_AWS_ID} in us-east-1.", _AWS_ID),
    Sample("aws-secret-key", f"aws_secret_access_key = {_AWS_SECRET}", _AWS_SECRET),
    Sample("github-token", f"git clone with GH token {_GHP} worked", _GHP),
    Sample("github-token", f"the OAuth app returned {_GHO}", _GHO),
    Sample("github-token", f"user-to-server token {_GHU}.", _GHU),
    Sample("github-token", f"installation token: {_GHS}", _GHS),
    Sample("github-token", f"refresh token {_GHR}", _GHR),
    Sample("github-token", f"Fine-grained PAT is {_GH_PAT} (expires in 30 days)", _GH_PAT),
    Sample("gitlab-token", f"use {_GLPAT} for the registry", _GLPAT),
    Sample("slack-token", f"bot token {_XOXB}", _XOXB),
    Sample("slack-token", f"user token is {_XOXP}", _XOXP),
    Sample("slack-webhook", f"curl -X POST {_SLACK_HOOK} -d '{{\"text\": \"hi\"}}'", _SLACK_HOOK),
    Sample("discord-webhook", f"alerts go to {_DISCORD_HOOK}", _DISCORD_HOOK),
    Sample("stripe-key", f"stripe.api_key = '{_SK_LIVE}'", _SK_LIVE),
    Sample("stripe-key", f"restricted key {_RK_LIVE} for reporting", _RK_LIVE),
    Sample("stripe-key", f"in tests we use {_SK_TEST}", _SK_TEST),
    Sample("stripe-key", f"webhook signing secret {_WHSEC}", _WHSEC),
    Sample("openai-key", f"My OpenAI key is {_OPENAI}, please use it", _OPENAI),
    Sample("openai-key", f"client = OpenAI(api_key=\"{_OPENAI_PROJ}\")", _OPENAI_PROJ),
    Sample("anthropic-key", f"Anthropic key: {_ANTHROPIC}", _ANTHROPIC),
    Sample("google-api-key", f"https://maps.googleapis.com/maps/api/geocode/json?address=x&key={_GOOGLE}", _GOOGLE),
    Sample("google-oauth-token", f"access token {_YA29} expires in 3599 s", _YA29),
    Sample("huggingface-token", f"huggingface-cli login --token {_HF}", _HF),
    Sample("npm-token", f"//registry.npmjs.org/:_authToken={_NPM}", _NPM),
    Sample("pypi-token", f"twine upload -u __token__ -p {_PYPI} dist/*", _PYPI),
    Sample("sendgrid-key", f"SendGrid says the key {_SENDGRID} is valid", _SENDGRID),
    Sample("twilio-key", f"Twilio API key SID {_TWILIO}", _TWILIO),
    Sample("telegram-bot-token", f"bot = Bot({_TELEGRAM!r})", _TELEGRAM),
    Sample("digitalocean-token", f"doctl auth init -t {_DO}", _DO),
    Sample("shopify-token", f"X-Shopify-Access-Token: {_SHOPIFY}", _SHOPIFY),
    Sample("jwt", f"the session cookie was {_JWT}; it decodes to sub=1234567890", _JWT),
    Sample("private-key", f"Here is the deploy key:\n{_RSA}\nadd it to the agent", _RSA),
    Sample("private-key", f"cat ~/.ssh/id_ed25519\n{_OPENSSH}\n", _OPENSSH),
    Sample("private-key", f"the pasted key was cut off:\n{_PKCS8_TRUNCATED}", _PKCS8_TRUNCATED),
    Sample("password", f"DATABASE config: password={_DB_PASSWORD}", _DB_PASSWORD),
    Sample("password", f"passwd: {_DB_PASSWORD}", _DB_PASSWORD),
    Sample("password", f"PGPASSWORD={_PG_PASSWORD} psql -h db -U app", _PG_PASSWORD),
    Sample("password", f'{{"user": "app", "password": "{_DB_PASSWORD}"}}', _DB_PASSWORD),
    Sample("password", f"mysqldump --user app --password {_DB_PASSWORD} shop", _DB_PASSWORD),
    Sample("password", f"export DB_PASSWORD='{_PG_PASSWORD}'", _PG_PASSWORD),
    Sample("password", f"the staging database password is {_PROSE_PASSWORD}", _PROSE_PASSWORD),
    Sample("password", f'the log line read {{\\"user\\": \\"app\\", \\"password\\": \\"{_DB_PASSWORD}\\"}}', _DB_PASSWORD),
    Sample("password", f"mysql -uroot -p{_PG_PASSWORD} shop", _PG_PASSWORD),
    Sample("secret-assignment", f"the CI token for the release job was {_ENV_KEY}", _ENV_KEY),
    Sample("connection-string", f"DATABASE_URL is postgres://app:{_PG_PASSWORD}@db.internal:5432/app", _PG_PASSWORD),
    Sample("connection-string", f"mysql://root:{_DB_PASSWORD}@127.0.0.1/shop", _DB_PASSWORD),
    Sample("connection-string", f"mongodb+srv://svc:{_MONGO_PASSWORD}@cluster0.example.net/db", _MONGO_PASSWORD),
    Sample("connection-string", f"redis://:{_REDIS_PASSWORD}@cache:6379/0", _REDIS_PASSWORD),
    Sample("connection-string", f"amqp://guest:{_AMQP_PASSWORD}@mq:5672/", _AMQP_PASSWORD),
    Sample("connection-string", f"git clone https://deploy:{_HTTPS_PASSWORD}@git.example.com/x.git", _HTTPS_PASSWORD),
    Sample("env-secret", f"STRIPE_KEY={_ENV_KEY}", _ENV_KEY),
    Sample("env-secret", f"export SESSION_SECRET={_ENV_SECRET}", _ENV_SECRET),
    Sample("env-secret", f"# .env\nDEBUG=1\nSENTRY_AUTH_TOKEN=\"{_ENV_TOKEN}\"\n", _ENV_TOKEN),
    Sample("authorization", f"curl -H 'Authorization: Bearer {_BEARER}' https://api.example.com/v1/me", _BEARER),
    Sample("authorization", f"Authorization: Basic {_BASIC}", _BASIC),
    Sample("bearer-token", f"send it with bearer {_BEARER} in the header", _BEARER),
    Sample("high-entropy", f"the signing key the service printed was {_ENTROPY}", _ENTROPY),
)
"""One sample per rule and shape; `KINDS` lists the kinds they cover."""

KINDS: frozenset[str] = frozenset(s.kind for s in SAMPLES)
