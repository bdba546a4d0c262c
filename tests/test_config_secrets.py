"""A PostgreSQL connection string is shown (start log, stats, errors, the UI) with every secret hidden, in every
form libpq accepts: a URL with the password in its user info (percent-encoded or holding characters that break
URL parsing), secret query parameters (`password`, `sslpassword`, percent-encoded keys such as `pass%77ord`),
and keyword/value strings (`host=x password=y`). One function owns it: config.mask_url (and mask_secrets for a
driver's error text about the URL)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentcache_mcp import cli
from agentcache_mcp.config import ENV_VARIABLES, ConfigError, Settings, mask_secrets, mask_url

SECRET_URLS = [
    # (url, its secret, what must stay visible)
    ("postgresql://agent:Kq7%40Zr9w@db.example/m", "Kq7%40Zr9w", "db.example"),
    ("postgresql://agent:Kq7@Zr9w@db.example:5432/m", "Kq7@Zr9w", "db.example:5432"),
    ("postgresql://agent:Kq7/Zr9w@db.example/m", "Kq7/Zr9w", "db.example"),
    ("postgresql://agent:Kq7#Zr9w@db.example/m", "Kq7#Zr9w", "db.example"),
    ("postgresql://agent:Kq7?Zr9w@db.example/m", "Kq7?Zr9w", "db.example"),
    ("postgresql://agent:Kq7[Zr9w]@db.example/m", "Kq7[Zr9w]", "db.example"),
    ("postgresql://agent:Kq7@x?y/Zr9w#Vn3@db.example:5432/m?sslmode=require", "Kq7@x?y/Zr9w#Vn3", "sslmode=require"),
    ("postgresql://db.example/m?pass%77ord=Kq7Zr9w&user=agent", "Kq7Zr9w", "user=agent"),
    ("postgresql://db.example/m?PASSWORD=Kq7Zr9w", "Kq7Zr9w", "db.example"),
    ("postgresql://db.example/m?sslpassword=Kq7Zr9w&sslmode=verify-full", "Kq7Zr9w", "sslmode=verify-full"),
    ("postgresql://db.example/m?sslmode=require&password=Kq7&Zr9w", "Kq7&Zr9w", "sslmode=require"),
    ("postgresql://db.example/m?oauth_client_secret=Kq7Zr9w", "Kq7Zr9w", "db.example"),
    ("postgresql://agent@db.example/m?user=x@y&password=Kq7Zr9w", "Kq7Zr9w", "db.example"),
    ("host=db.example password=Kq7Zr9w dbname=m", "Kq7Zr9w", "host=db.example"),
    ("host=db.example password = 'Kq7 Zr9w\\'s' dbname=m", "Kq7 Zr9w\\'s", "dbname=m"),
    ("host=db.example sslpassword=Kq7Zr9w", "Kq7Zr9w", "host=db.example"),
]


def pieces(secret: str) -> list[str]:
    """The secret and every piece of it between characters that URL parsers split at: none may be shown."""
    return [secret, *(p for p in re.split(r"[@/?#:&=\[\]' \\%]", secret) if len(p) >= 3)]


@pytest.mark.parametrize(("url", "secret", "kept"), SECRET_URLS, ids=[u for u, _, _ in SECRET_URLS])
def test_mask_url_hides_a_secret_in_every_form_libpq_accepts(url: str, secret: str, kept: str) -> None:
    shown = mask_url(url)
    for piece in pieces(secret):
        assert piece not in shown, (piece, shown)
    assert kept in shown and "***" in shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://db.example:5432/m?sslmode=require",
        "postgresql:///m?host=/var/run/postgresql",
        "postgresql://agent@db.example/m",
        "postgresql://db.example:5432/m?user=me@corp.example",
    ],
)
def test_mask_url_leaves_a_url_without_secrets_as_it_is(url: str) -> None:
    assert mask_url(url) == url


def test_a_drivers_error_about_the_url_is_masked_too() -> None:
    # libpq repeats a bad percent-escape of the password, and a password holding '@' becomes part of the host
    url = "postgresql://agent:Kq7%zzZr9w@db.example/m"
    assert "Kq7" not in mask_secrets('invalid percent-encoded token: "Kq7%zzZr9w"', url)
    url = "postgresql://agent:Kq7@Zr9w@127.0.0.1:1/m"
    said = mask_secrets("failed to resolve host 'Zr9w@127.0.0.1': [Errno -2] Name or service not known", url)
    assert "Zr9w" not in said and "failed to resolve host" in said
    said = mask_secrets("failed to resolve host 'x#W@127.0.0.1'", "postgresql://agent:Kq@x#W@127.0.0.1:1/m")
    assert "x#W" not in said and "#W" not in said and "failed to resolve host" in said  # short pieces too
    said = mask_secrets("could not connect: unable to reach 'ab@h'", "postgresql://agent:p@ab@h/m")
    assert "'***@h'" in said and "unable" in said  # a short piece only where it stands alone


def test_a_keyword_value_string_in_agentcache_db_is_refused_with_its_password_masked() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"AGENTCACHE_DB": "host=db.example password=Kq7Zr9w dbname=m"})
    message = str(caught.value)
    assert "Kq7Zr9w" not in message and "postgresql://" in message and "AGENTCACHE_DB" in message


@pytest.mark.parametrize(
    "url", ["postgresq://agent:Kq7Zr9w@db.example/m", "postgres:/agent:Kq7Zr9w@db.example/m", "pg://a:Kq7Zr9w@h/m"]
)
def test_a_mistyped_url_in_agentcache_db_is_refused_with_its_password_masked(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"AGENTCACHE_DB": url})
    assert "Kq7Zr9w" not in str(caught.value) and "not a PostgreSQL one" in str(caught.value)
    for name in ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        cli.main(["list", "--db", url])
    out, err = capsys.readouterr()
    assert "Kq7Zr9w" not in out + err and len(err.splitlines()) == 1


def test_a_windows_drive_path_is_still_a_path(tmp_path: Path) -> None:
    assert Settings.from_env({"AGENTCACHE_DB": str(tmp_path / "m.db")}).database_url is None
    assert mask_url("C:/Users/me/memory.db") == "C:/Users/me/memory.db"


def test_settings_repr_never_carries_the_url() -> None:
    settings = Settings.from_env({"AGENTCACHE_DB": "postgresql://agent:Kq7Zr9w@db.example/m"})
    assert "Kq7Zr9w" not in repr(settings) and "Kq7Zr9w" not in str(settings)


def test_settings_repr_never_carries_the_auth_token() -> None:
    settings = Settings.from_env({"AGENTCACHE_AUTH_TOKEN": "tok-Hq2Vx8PzLm4Rt6Wy"})
    assert settings.auth_token == "tok-Hq2Vx8PzLm4Rt6Wy"
    assert "Hq2Vx8PzLm4Rt6Wy" not in repr(settings) and "Hq2Vx8PzLm4Rt6Wy" not in str(settings)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://agent:Kq7%zzZr9w@127.0.0.1:1/m",  # refused by libpq's parser, which quotes the token
        "postgresql://agent:Kq7@Zr9w@127.0.0.1:1/m",  # libpq takes 'Zr9w@127.0.0.1' for the host
    ],
)
def test_the_command_line_never_prints_a_password_when_the_database_cannot_be_reached(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg")
    for name in ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        cli.main(["stats", "--db", url])
    out, err = capsys.readouterr()
    assert "Kq7" not in out + err and "Zr9w" not in out + err
    assert err.startswith("agentcache-mcp: ") and "127.0.0.1" in err


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://agent@127.0.0.1:1/m?pasword=Kq7Zr9w",
        "postgresql://agent@127.0.0.1:1/m?sslmode=require&pwd=Kq7Zr9w",
        "postgresql://agent@127.0.0.1:1/m?passwrod=Kq7Zr9w&sslmode=require",
    ],
    ids=["pasword", "pwd", "passwrod"],
)
def test_a_mistyped_password_parameter_is_hidden_too(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq refuses a parameter it does not know ('invalid URI query parameter'), so its value is never needed to
    # tell what went wrong; a careless user's misspelt password key printed the password whole.
    assert "Kq7Zr9w" not in mask_url(url)
    pytest.importorskip("psycopg")
    for name in ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        cli.main(["stats", "--db", url])
    out, err = capsys.readouterr()
    assert "Kq7Zr9w" not in out + err
    assert err.startswith("agentcache-mcp: ") and "127.0.0.1" in err


@pytest.mark.parametrize("password", ["o", "on", "nn"])
def test_a_short_password_leaves_the_error_readable_and_unspelt(
    password: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A password of one or two letters was replaced wherever it stood in the driver's error: 'c***nnecti***n
    # refused' was unreadable, and spelt out the password by where the stars fell.
    pytest.importorskip("psycopg")
    for name in ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        cli.main(["stats", "--db", f"postgresql://agent:{password}@127.0.0.1:1/m"])
    _, err = capsys.readouterr()
    assert "Connection refused" in err and "connection to server at" in err, err
    assert "postgresql://agent:***@127.0.0.1:1/m" in err


def test_no_password_made_of_url_delimiters_is_ever_shown() -> None:
    """Random passwords of URL delimiters around a marker, in each place a URL or a keyword/value string
    carries one, with and without percent-encoding: the marker is never in what is shown (80,000 such cases
    showed none; 3,000 here)."""
    import random
    from urllib.parse import quote

    rng = random.Random(19)
    delimiters = "abcXYZ0189@/?#[]:&=%!$'()*+,;~ -_."
    for _ in range(3000):
        marker = "Q" + "".join(rng.choice("KWVJ") for _ in range(5))
        password = "".join(rng.choice(delimiters) for _ in range(rng.randint(0, 6)))
        password += marker + "".join(rng.choice(delimiters) for _ in range(rng.randint(0, 6)))
        host = rng.choice(["db.example", "db.example:5432", "10.0.0.1", "[::1]:5433", "h1:5432,h2:5433", ""])
        tail = rng.choice(["/m", "/m?sslmode=require", "", "/m?user=a@b", "?host=/run/pg", "/m?user=me@corp"])
        quoted = password.replace("\\", "\\\\").replace("'", "\\'")
        url = rng.choice(
            [
                f"postgresql://agent:{password}@{host}{tail}",
                f"postgresql://agent:{quote(password, safe='')}@{host}{tail}",
                f"postgresql://{host}/m?sslmode=require&password={password}{rng.choice(['', '&user=x', '#f'])}",
                f"postgresql://{host}/m?pass%77ord={quote(password, safe='')}&x=1",
                f"postgresql://agent@{host}/m?sslpassword={password}",
                f"host=db password='{quoted}' dbname=m",
            ]
        )
        assert marker not in mask_url(url), url
