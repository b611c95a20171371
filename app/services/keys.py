"""API keys: create (the secret is shown once), list, revoke, and authenticate a secret.

A secret is `ctd_<id>_<43 random characters>` (256 bits). Only its SHA-256 is stored: the
secret has full entropy, so a fast hash is enough and lets a lookup be one indexed query.
Looked-up keys are cached for `auth.key_cache_seconds`; a revocation clears this replica's
cache at once and, through Redis, every other replica's (app/services/key_revocations.py), and
ends what the key still runs there (its WebSockets: `revocation_watchers`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.domain.access import ANONYMOUS, INTERNAL, Principal, Scope, parse_scopes, rejected
from app.domain.filters import parse_filter
from app.errors import BadInput, NotFound
from app.services.audit import audit
from app.services.key_revocations import announce_revocation, revocation_channel
from app.services.collections import validate_name
from app.settings import Settings

SECRET_PREFIX = "ctd_"
MAX_NAME_CHARS = 100
MAX_CACHED_KEYS = 10_000
ENV_ADMIN_ID = "env-admin"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyRequest:
    name: str
    scopes: Sequence[Any]
    collections: Sequence[str] | None = None
    filter: Any = None
    rate_per_second: float | None = None


def principal_of(row: Any) -> Principal:
    return Principal(
        kind="key",
        key_id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=frozenset(Scope(s) for s in row.scopes),
        collections=None if row.collections is None else frozenset(row.collections),
        filter=row.filter,
        rate_per_second=row.rate_per_second,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


def _validated(request: KeyRequest) -> KeyRequest:
    name = request.name.strip() if isinstance(request.name, str) else ""
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise BadInput(f"name: 1-{MAX_NAME_CHARS} printable characters", field="name")
    scopes = parse_scopes(request.scopes)
    if not scopes:
        raise BadInput("scopes: give at least one of READ, WRITE, ADMIN", field="scopes")
    collections = request.collections
    if collections is not None:
        collections = sorted({validate_name(c) for c in collections})
    if request.filter is not None:
        parse_filter(request.filter)  # BAD_INPUT naming the part
    rate = request.rate_per_second
    if rate is not None and (isinstance(rate, bool) or not math.isfinite(rate) or rate <= 0):
        raise BadInput("ratePerSecond must be a positive number", field="ratePerSecond")
    return KeyRequest(name, sorted(s.value for s in scopes), collections, request.filter, rate)


class KeyService:
    def __init__(self, settings: Settings, repo: Any, redis: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.repo = repo  # app.adapters.api_keys.ApiKeyRepo
        self.redis = redis  # revocations are announced to the other replicas through it
        self.clock = clock  # what the key cache's expiry is measured on (tests move it on)
        self._cache: dict[str, tuple[float, Principal]] = {}
        # Called with the key id of each revocation seen here (app/graphql/websockets.KeySockets).
        self.revocation_watchers: list[Callable[[str], None]] = []
        admin = settings.auth.admin_key
        self._admin_hash = hash_secret(admin.get_secret_value()) if admin and admin.get_secret_value() else None

    @property
    def required(self) -> bool:
        return self.settings.auth_required

    # -- authentication ---------------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> Principal:
        """The caller for a secret (None: no key given). Never raises for a bad key: the
        principal is 'rejected' and every check then says UNAUTHENTICATED."""
        if secret is None:
            return rejected("a valid API key is required (Authorization: Bearer <key>)") if self.required else ANONYMOUS
        digest = hash_secret(secret)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Principal(kind="env", key_id=ENV_ADMIN_ID, name="CITADEL_AUTH__ADMIN_KEY", scopes=frozenset({Scope.ADMIN}))
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self.repo.use(digest)
        if row is None:
            principal = rejected("unknown API key")
        elif row.revoked:
            principal = rejected("this API key was revoked")
        else:
            principal = principal_of(row)
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[digest] = (now + self.settings.auth.key_cache_seconds, principal)
        return principal

    def metrics_allowed(self, secret: str | None, principal: Principal) -> bool:
        token = self.settings.auth.metrics_token
        if token and secret is not None and hmac.compare_digest(hash_secret(secret), hash_secret(token.get_secret_value())):
            return True
        return principal.is_admin

    # -- administration ---------------------------------------------------------------------

    async def create(self, request: KeyRequest, principal: Principal) -> tuple[Any, str]:
        """The stored key and its secret, which is never available again."""
        principal.require_key_admin()
        valid = _validated(request)
        key_id = secrets.token_hex(6)
        secret = f"{SECRET_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        row = await self.repo.insert(
            key_id,
            valid.name,
            secret[: len(SECRET_PREFIX) + len(key_id)],
            hash_secret(secret),
            valid.scopes,
            valid.collections,
            valid.filter,
            valid.rate_per_second,
        )
        audit(principal, "created key", f"{row.id} ({row.name}) scopes={','.join(row.scopes)}")
        return row, secret

    async def list(self, principal: Principal) -> list[Any]:
        principal.require_key_admin()
        return await self.repo.list()

    async def revoke(self, key_id: str, principal: Principal) -> bool:
        principal.require_key_admin()
        if await self.repo.get(key_id) is None:
            raise NotFound(f"API key {key_id!r} not found", id=key_id)
        changed = await self.repo.revoke(key_id)
        self.forget(key_id)  # seen at once on this replica...
        await announce_revocation(
            self.redis, key_id, self.settings.auth.key_cache_seconds, revocation_channel(self.settings)
        )  # ...and the others
        audit(principal, "revoked key", key_id)
        return changed

    def forget(self, key_id: str) -> None:
        """A revocation seen here (made on this replica, or on another and carried by Redis): drop
        every cached lookup of this key (its next use reads PostgreSQL) and tell the watchers."""
        self._cache = {h: entry for h, entry in self._cache.items() if entry[1].key_id != key_id}
        for watcher in self.revocation_watchers:
            watcher(key_id)

    async def me(self, principal: Principal) -> Any:
        """The caller's own key row (None for anonymous callers and the environment admin)."""
        principal.require(Scope.READ)
        if principal.kind != "key" or principal.key_id is None:
            return None
        return await self.repo.get(principal.key_id)

    async def principal_again(self, kind: str, key_id: str | None) -> Principal | None:
        """The caller that started background work (a job), as it stands now: None when its key
        was revoked or is gone (or the environment admin key is no longer configured)."""
        if kind == "anonymous":
            return ANONYMOUS
        if kind == "internal":
            return INTERNAL
        if kind == "env":
            if self._admin_hash is None:
                return None
            return Principal(kind="env", key_id=ENV_ADMIN_ID, name="CITADEL_AUTH__ADMIN_KEY", scopes=frozenset({Scope.ADMIN}))
        row = await self.repo.get(key_id) if key_id else None
        return None if row is None or row.revoked else principal_of(row)
