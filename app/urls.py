"""Service URLs as they are shown and as drivers read them: one masking rule, one DSN rule.

No third-party imports: `citadel doctor` uses this to describe an environment whose drivers may
be missing.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pass", "api_key", "apikey", "token", "secret"})


def mask_url(url: str | None) -> str:
    """The URL with its password and secret query parameters replaced by ***."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
        query = urlencode(
            [(k, "***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
            safe="*",
        )
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<unparseable URL>"


def url_secrets(url: str | None) -> list[str]:
    """What `mask_url` hides in `url`: the password (as written and decoded) and secret parameters."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    password = parts.password or ""
    # Drivers report the decoded form in their errors.
    return [password, unquote(password), *(v for k, v in parse_qsl(parts.query) if k.lower() in SECRET_QUERY_KEYS)]


def asyncpg_dsn(url: str) -> str:
    """The URL as asyncpg reads it: SQLAlchemy-style schemes (postgresql+asyncpg://) lose the driver."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}" if sep else url
