"""Which document an operation runs: its text, a persisted query, or a trusted document.

- Automatic persisted queries (Apollo's APQ): `extensions.persistedQuery {version: 1, sha256Hash}`.
  Without `query`, the document stored under that hash runs, or the answer is the error
  `PersistedQueryNotFound` (`extensions.code` PERSISTED_QUERY_NOT_FOUND, HTTP 200, as Apollo's
  PersistedQueryLink expects); with `query`, its sha256 must be the hash, and the document is
  stored in Redis under the deployment's namespace (shared by every replica) for
  CITADEL_SERVER__PERSISTED_QUERY_TTL_SECONDS, when it parses and is at most
  CITADEL_SERVER__PERSISTED_QUERY_MAX_BYTES. Each replica keeps the last few in memory.
- Trusted documents (CITADEL_SERVER__TRUSTED_DOCUMENTS=require): keys other than ADMIN run only
  documents registered with `citadel documents add` (PostgreSQL), named by `documentId`
  (`sha256:<hex>`), by the APQ hash, or sent whole when their hash is registered; anything else is
  FORBIDDEN. A registered document is also found by its hash with the setting off.

Whatever names it, the document then goes through every rule of app/graphql/operation_rules.py
(token limit, validation, cost rules), like a document sent in full.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from typing import Any, Protocol

from loguru import logger

from app.errors import BadInput, CitadelError, Forbidden, NotFound
from app.web.auth import require_key

APQ_VERSION = 1
NOT_FOUND_MESSAGE = "PersistedQueryNotFound"  # the message (and code below) Apollo's clients look for
NOT_FOUND_CODE = "PERSISTED_QUERY_NOT_FOUND"
DOCUMENT_ID_KEY = "documentId"  # a request's top-level `documentId` travels in its extensions
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
LOCAL_ENTRIES = 1024


class PersistedQueryNotFound(CitadelError):
    code = NOT_FOUND_CODE

    def __init__(self) -> None:
        super().__init__(NOT_FOUND_MESSAGE)


def document_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_document_id(value: object) -> str:
    """The hex sha256 of `sha256:<hex>` (or bare hex), else BadInput."""
    if isinstance(value, str):
        digest = value.removeprefix("sha256:").lower()
        if _HEX64.match(digest):
            return digest
    raise BadInput('documentId must be "sha256:" followed by the 64 hex digits of the document\'s sha256')


def _apq_hash(extension: object) -> str:
    if not isinstance(extension, dict) or extension.get("version") != APQ_VERSION:
        raise BadInput(f"extensions.persistedQuery needs version {APQ_VERSION} and sha256Hash")
    digest = extension.get("sha256Hash")
    if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
        raise BadInput("extensions.persistedQuery.sha256Hash must be the 64 hex digits of the document's sha256")
    return digest.lower()


class Registry(Protocol):
    async def get(self, digest: str) -> str | None: ...


class _Recent:
    """The last documents seen, by hash, each for at most `seconds` (None: as long as it stays)."""

    def __init__(self, size: int, seconds: float | None) -> None:
        self.size, self.seconds = size, seconds
        self._items: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    def get(self, digest: str) -> tuple[bool, str | None]:
        item = self._items.get(digest)
        if item is None or (self.seconds is not None and time.monotonic() - item[0] > self.seconds):
            return False, None
        self._items.move_to_end(digest)
        return True, item[1]

    def put(self, digest: str, text: str | None) -> None:
        self._items[digest] = (time.monotonic(), text)
        self._items.move_to_end(digest)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class PersistedQueries:
    """APQ documents in Redis (`citadel:<namespace>:apq:<sha256>`), bounded by TTL and size.

    Redis being slow or down is no error: a lookup then misses (the client sends the text) and a
    store is skipped."""

    def __init__(self, redis: Any, prefix: str, ttl_seconds: int, max_bytes: int, timeout_seconds: float) -> None:
        self.redis, self.prefix = redis, prefix
        self.ttl_seconds, self.max_bytes, self.timeout = ttl_seconds, max_bytes, timeout_seconds
        self._recent = _Recent(LOCAL_ENTRIES, ttl_seconds)

    async def get(self, digest: str) -> str | None:
        known, text = self._recent.get(digest)
        if known:
            return text
        try:
            value = await asyncio.wait_for(self.redis.get(self.prefix + digest), self.timeout)
        except Exception as exc:  # noqa: BLE001 - Redis unreachable or slow: a miss
            logger.debug("persisted query lookup skipped: {}", exc)
            return None
        if value is None:
            return None
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if document_hash(text) != digest:  # never run what does not match its name
            return None
        self._recent.put(digest, text)
        return text

    async def put(self, digest: str, text: str) -> bool:
        if len(text.encode("utf-8")) > self.max_bytes:
            return False
        self._recent.put(digest, text)
        try:
            await asyncio.wait_for(self.redis.set(self.prefix + digest, text, ex=self.ttl_seconds), self.timeout)
        except Exception as exc:  # noqa: BLE001 - kept in this replica only
            logger.debug("persisted query not stored in Redis: {}", exc)
            return False
        return True


class TrustedDocuments:
    """The registry (app/adapters/trusted_documents.py) with each replica's answers kept for
    `cache_seconds`: a document removed with the CLI stops running within that time."""

    def __init__(self, registry: Registry, cache_seconds: float) -> None:
        self.registry = registry
        self._recent = _Recent(LOCAL_ENTRIES * 4, cache_seconds)

    async def get(self, digest: str) -> str | None:
        known, text = self._recent.get(digest)
        if not known:
            text = await self.registry.get(digest)
            self._recent.put(digest, text)
        return text


class DocumentSource:
    """Turns a request's `query` and extensions into the text to run, under APQ and trusted documents."""

    def __init__(self, persisted: PersistedQueries | None, trusted: TrustedDocuments, require_trusted: bool,
                 parses: Any) -> None:
        self.persisted, self.trusted, self.require_trusted = persisted, trusted, require_trusted
        self.parses = parses  # callable(text) -> bool: only documents that parse are stored

    def _bound(self, context: Any) -> bool:
        """True when the caller must run trusted documents only; raises for a caller without a key."""
        principal = getattr(context, "principal", None)
        if principal is None:
            return False
        require_key(principal, getattr(context, "auth_error", None))
        return self.require_trusted and not principal.is_admin

    async def resolve(self, context: Any, query: str | None, extensions: dict[str, Any] | None) -> str:
        """The document to run; raises a CitadelError (PersistedQueryNotFound, FORBIDDEN, BAD_INPUT)."""
        bound = self._bound(context)
        extensions = extensions or {}
        if DOCUMENT_ID_KEY in extensions:
            digest = parse_document_id(extensions[DOCUMENT_ID_KEY])
            text = await self.trusted.get(digest)
            if text is None and not bound and self.persisted is not None:
                text = await self.persisted.get(digest)
            if text is None:
                if bound:
                    raise not_registered(digest)
                raise NotFound(f"no document is registered as sha256:{digest}")
            return text
        if "persistedQuery" in extensions and self.persisted is not None:
            digest = _apq_hash(extensions["persistedQuery"])
            if query is not None:
                if document_hash(query) != digest:
                    raise BadInput("provided sha does not match query: extensions.persistedQuery.sha256Hash must be the sha256 of `query`")
                if bound:
                    await self.require_registered(digest)
                elif self.parses(query):
                    await self.persisted.put(digest, query)
                return query
            text = await self.trusted.get(digest)
            if text is None and bound:
                raise not_registered(digest)
            if text is None:
                text = await self.persisted.get(digest)
            if text is None:
                raise PersistedQueryNotFound()
            return text
        if query and bound:
            await self.require_registered(document_hash(query))
        return query or ""

    async def require_registered(self, digest: str) -> None:
        if await self.trusted.get(digest) is None:
            raise not_registered(digest)

    async def check_text(self, context: Any, query: str | None) -> None:
        """For operations whose text is already known (WebSocket): refused unless it may run."""
        if query and self._bound(context):
            await self.require_registered(document_hash(query))


def not_registered(digest: str) -> Forbidden:
    return Forbidden(
        f"the document sha256:{digest} is not registered: only registered documents may run for this key "
        "(CITADEL_SERVER__TRUSTED_DOCUMENTS=require; an operator adds them with `citadel documents add`)"
    )
