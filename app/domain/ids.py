"""Content hashes, derived document ids and deterministic vector point ids.

Everything here is a pure function of its inputs, so a retried ingest produces the same
hashes and point ids and lands on the same rows and points (idempotence).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

# Fixed for the lifetime of the product: changing it would orphan every stored point.
POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "citadel:vector-points")

DERIVED_ID_HEX_CHARS = 32


def canonical_json(value: Any) -> str:
    """One spelling per JSON value, so equal metadata always hashes equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_hash(text: str, metadata: dict[str, Any] | None, vector: bytes | None = None) -> str:
    digest = hashlib.sha256()
    digest.update(text.encode("utf-8"))
    # A separator byte that cannot occur in UTF-8 text keeps (text, metadata) pairs unambiguous.
    digest.update(b"\xff")
    digest.update(canonical_json(metadata or {}).encode("utf-8"))
    if vector is not None:  # a document's own vector is content too: a new one is an update
        digest.update(b"\xff")
        digest.update(vector)
    return digest.hexdigest()


def derived_document_id(text: str, metadata: dict[str, Any] | None) -> str:
    """Id for a document sent without one: the same content always gets the same id."""
    return content_hash(text, metadata)[:DERIVED_ID_HEX_CHARS]


def point_id(collection: str, document_id: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{collection}/{document_id}"))


def chunk_point_id(collection: str, document_id: str, chunk_index: int) -> str:
    # NUL cannot occur in a document id (ingest refuses it), so no two (id, index) pairs collide.
    return str(uuid.uuid5(POINT_NAMESPACE, f"{collection}/{document_id}\x00{chunk_index}"))
