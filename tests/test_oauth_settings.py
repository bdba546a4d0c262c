"""The OAuth settings (AGENTCACHE_OAUTH and its companions): what they default to, and the start-up refusals of
combinations that cannot work or would be unsafe, each one line naming the variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentcache_mcp.config import ConfigError, Settings


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def refusal(host: str | None = None, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env, host=host)
    return str(caught.value)


def test_oauth_is_off_by_default_and_the_defaults_are_the_agreed_ones():
    s = settings()
    assert s.oauth == "off"
    assert s.public_url is None and s.oauth_passphrase is None
    assert s.oauth_access_ttl_s == 3600 and s.oauth_refresh_ttl_s == 30 * 86400
    assert s.jwt_scope == "memory" and s.jwt_audience is None
    assert s.oauth_redirect_uris == () and s.allowed_origins == ()


def test_builtin_oauth_with_a_passphrase_on_loopback_is_accepted_and_the_passphrase_is_not_in_the_repr():
    s = settings(AGENTCACHE_OAUTH="builtin", AGENTCACHE_OAUTH_PASSPHRASE="correct horse battery")
    assert s.oauth == "builtin"
    assert "correct horse" not in repr(s)


def test_builtin_oauth_with_only_the_auth_token_is_accepted():
    assert settings(AGENTCACHE_OAUTH="BuiltIn", AGENTCACHE_AUTH_TOKEN="t" * 32).oauth == "builtin"


def test_an_unknown_oauth_mode_is_refused_naming_the_choices():
    message = refusal(AGENTCACHE_OAUTH="google")
    assert "AGENTCACHE_OAUTH 'google' is invalid" in message
    assert "off, builtin or jwt" in message


def test_builtin_oauth_without_a_passphrase_or_token_is_refused():
    message = refusal(AGENTCACHE_OAUTH="builtin")
    assert "AGENTCACHE_OAUTH=builtin needs AGENTCACHE_OAUTH_PASSPHRASE" in message
    assert "AGENTCACHE_AUTH_TOKEN" in message


def test_a_passphrase_shorter_than_twelve_characters_is_refused_without_showing_it():
    message = refusal(AGENTCACHE_OAUTH="builtin", AGENTCACHE_OAUTH_PASSPHRASE="hunter2")
    assert "AGENTCACHE_OAUTH_PASSPHRASE" in message and "at least 12" in message
    assert "hunter2" not in message


def test_jwt_oauth_without_issuer_or_jwks_url_is_refused():
    assert "AGENTCACHE_JWT_ISSUER" in refusal(AGENTCACHE_OAUTH="jwt", AGENTCACHE_JWT_JWKS_URL="https://idp.example/jwks")
    assert "AGENTCACHE_JWT_JWKS_URL" in refusal(AGENTCACHE_OAUTH="jwt", AGENTCACHE_JWT_ISSUER="https://idp.example/")


def test_jwt_oauth_with_issuer_and_jwks_url_is_accepted():
    s = settings(
        AGENTCACHE_OAUTH="jwt",
        AGENTCACHE_JWT_ISSUER="https://idp.example/",
        AGENTCACHE_JWT_JWKS_URL="https://idp.example/.well-known/jwks.json",
        AGENTCACHE_JWT_AUDIENCE="api://agentcache",
        AGENTCACHE_JWT_SCOPE="memory.rw",
    )
    assert (s.jwt_issuer, s.jwt_audience, s.jwt_scope) == ("https://idp.example/", "api://agentcache", "memory.rw")


def test_a_jwks_url_over_plain_http_is_refused_unless_it_is_loopback():
    message = refusal(
        AGENTCACHE_OAUTH="jwt", AGENTCACHE_JWT_ISSUER="https://idp.example/", AGENTCACHE_JWT_JWKS_URL="http://idp.example/jwks"
    )
    assert "AGENTCACHE_JWT_JWKS_URL 'http://idp.example/jwks' is invalid" in message and "https" in message
    s = settings(
        AGENTCACHE_OAUTH="jwt", AGENTCACHE_JWT_ISSUER="http://127.0.0.1:9000", AGENTCACHE_JWT_JWKS_URL="http://127.0.0.1:9000/jwks"
    )
    assert s.jwt_jwks_url == "http://127.0.0.1:9000/jwks"


def test_a_jwt_scope_with_a_space_is_refused():
    assert "AGENTCACHE_JWT_SCOPE 'memory admin' is invalid" in refusal(AGENTCACHE_JWT_SCOPE="memory admin")


def test_oauth_on_a_non_loopback_bind_without_a_public_url_is_refused():
    message = refusal(AGENTCACHE_OAUTH="builtin", AGENTCACHE_OAUTH_PASSPHRASE="correct horse battery", host="0.0.0.0")
    assert "AGENTCACHE_PUBLIC_URL" in message and "0.0.0.0" in message


def test_oauth_on_a_non_loopback_bind_with_an_https_public_url_is_accepted():
    s = Settings.from_env(
        {"AGENTCACHE_OAUTH": "builtin", "AGENTCACHE_OAUTH_PASSPHRASE": "correct horse battery",
         "AGENTCACHE_PUBLIC_URL": "https://Mem.Example.com/"},
        host="0.0.0.0",
    )
    assert s.public_url == "https://mem.example.com"  # canonical: lower-case host, no trailing slash


def test_a_public_url_over_plain_http_is_refused_unless_it_is_loopback():
    message = refusal(AGENTCACHE_PUBLIC_URL="http://mem.example.com")
    assert "AGENTCACHE_PUBLIC_URL 'http://mem.example.com' is invalid" in message and "https" in message
    assert settings(AGENTCACHE_PUBLIC_URL="http://localhost:8765").public_url == "http://localhost:8765"
    assert settings(AGENTCACHE_PUBLIC_URL="http://[::1]:8765").public_url == "http://[::1]:8765"


@pytest.mark.parametrize(
    "url",
    ["mem.example.com", "https://mem.example.com/memory", "https://mem.example.com/?a=b", "https://mem.example.com/#x",
     "https://user:pw@mem.example.com", "ftp://mem.example.com", "https://"],
)
def test_a_public_url_that_is_not_a_bare_origin_is_refused(url):
    assert f"AGENTCACHE_PUBLIC_URL {url!r} is invalid" in refusal(AGENTCACHE_PUBLIC_URL=url)


def test_ttls_out_of_range_are_refused():
    assert "AGENTCACHE_OAUTH_ACCESS_TTL_S must be" in refusal(AGENTCACHE_OAUTH_ACCESS_TTL_S="10")
    assert "AGENTCACHE_OAUTH_REFRESH_TTL_S must be" in refusal(AGENTCACHE_OAUTH_REFRESH_TTL_S="0")
    message = refusal(AGENTCACHE_OAUTH_ACCESS_TTL_S="7200", AGENTCACHE_OAUTH_REFRESH_TTL_S="3600")
    assert "AGENTCACHE_OAUTH_REFRESH_TTL_S" in message and "AGENTCACHE_OAUTH_ACCESS_TTL_S" in message


def test_extra_redirect_uris_are_parsed_and_unsafe_ones_refused():
    s = settings(AGENTCACHE_OAUTH_REDIRECT_URIS="https://app.example/cb, myapp.example://oauth")
    assert s.oauth_redirect_uris == ("https://app.example/cb", "myapp.example://oauth")
    for bad in ("http://app.example/cb", "https://app.example/cb#frag", "*", "not a uri", "javascript:alert(1)"):
        assert "AGENTCACHE_OAUTH_REDIRECT_URIS" in refusal(AGENTCACHE_OAUTH_REDIRECT_URIS=bad), bad


def test_allowed_origins_are_bare_web_origins():
    s = settings(AGENTCACHE_ALLOWED_ORIGINS="https://claude.ai, https://Inspector.Example:8443")
    assert s.allowed_origins == ("https://claude.ai", "https://inspector.example:8443")
    for bad in ("*", "https://claude.ai/", "claude.ai", "null", "https://claude.ai/path", "file://x"):
        assert "AGENTCACHE_ALLOWED_ORIGINS" in refusal(AGENTCACHE_ALLOWED_ORIGINS=bad), bad


def test_a_jwt_issuer_that_is_not_an_https_url_is_refused():
    for bad in ("acme", "http://idp.example/", "https://idp.example/?x=1"):
        message = refusal(AGENTCACHE_JWT_ISSUER=bad)
        assert f"AGENTCACHE_JWT_ISSUER {bad!r} is invalid" in message, bad
    assert settings(AGENTCACHE_JWT_ISSUER="https://idp.example/").jwt_issuer == "https://idp.example/"  # kept exactly


def test_serve_refuses_inconsistent_oauth_settings_with_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from test_cli import refused as cli_refused

    serve = ["serve", "--db", str(tmp_path / "m.db"), "--transport", "streamable-http"]
    monkeypatch.setenv("AGENTCACHE_OAUTH", "builtin")
    line = cli_refused(monkeypatch, capsys, serve)
    assert line.startswith("agentcache-mcp: invalid configuration: AGENTCACHE_OAUTH=builtin needs AGENTCACHE_OAUTH_PASSPHRASE")
    monkeypatch.setenv("AGENTCACHE_OAUTH_PASSPHRASE", "correct horse battery")
    line = cli_refused(monkeypatch, capsys, [*serve, "--host", "0.0.0.0"])
    assert "needs AGENTCACHE_PUBLIC_URL" in line and "correct horse" not in line
    monkeypatch.setenv("AGENTCACHE_PUBLIC_URL", "http://mem.example.com")
    line = cli_refused(monkeypatch, capsys, [*serve, "--host", "0.0.0.0"])
    assert "AGENTCACHE_PUBLIC_URL 'http://mem.example.com' is invalid: must be https" in line
