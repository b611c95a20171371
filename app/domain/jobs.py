"""Background jobs (ingests of uploaded files or of many documents): their states, their row and
the progress figures derived from it (no I/O).

A job reads its sources (files in the data dir) in order; `cursor_source`/`cursor_offset` say
where the next batch starts and move only with a committed batch, together with the counts, so a
job resumed after a crash continues after its last committed batch and counts each document once.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any


class JobKind(enum.Enum):
    INGEST = "INGEST"
    REINDEX = "REINDEX"


class JobState(enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in FINISHED


ACTIVE = (JobState.QUEUED, JobState.RUNNING)
FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# What a source file holds, decided from its content (app/services/job_sources.py).
NDJSON = "application/x-ndjson"
TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"
INVALID = "invalid"  # a file that is none of these: it fails as one document, with `reason`
SINGLE_DOCUMENT_TYPES = (TEXT, MARKDOWN, HTML, PDF)


@dataclass(frozen=True)
class JobSource:
    """One file of a job, in the job's directory: JSON Lines (many documents) or one document."""

    path: str  # relative to the job's directory
    name: str  # the file name as uploaded (the document's id and `source`)
    content_type: str
    bytes: int
    documents: int  # documents it holds (JSON Lines: non-blank lines)
    reason: str | None = None  # INVALID: why

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobSource:
        return cls(**{k: raw.get(k) for k in ("path", "name", "content_type", "bytes", "documents", "reason")})


@dataclass(frozen=True)
class JobError:
    index: int  # the document's position in the job (every source, in order)
    id: str | None
    code: str
    message: str


@dataclass(frozen=True)
class Job:
    id: str
    kind: JobKind
    collection: str
    state: JobState
    replica: str
    principal_kind: str  # who started it: "key", "env", "anonymous" or "internal"
    key_id: str | None
    sources: tuple[JobSource, ...]
    metadata: dict[str, Any] | None
    documents_total: int | None
    documents_done: int
    documents_failed: int
    chunks_done: int
    bytes_total: int | None
    bytes_done: int
    cursor_source: int
    cursor_offset: int
    cursor_id: str | None  # a REINDEX job's place: the last document id it rebuilt
    errors: tuple[JobError, ...]
    message: str | None
    run_seconds: float
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    origin: str = field(default="", compare=False)  # the process that published it as an event

    @property
    def documents_seen(self) -> int:
        return self.documents_done + self.documents_failed

    @property
    def percent(self) -> float | None:
        if self.state is JobState.SUCCEEDED:
            return 100.0
        if self.documents_total:
            return round(min(100.0, 100.0 * self.documents_seen / self.documents_total), 2)
        if self.bytes_total:
            return round(min(100.0, 100.0 * self.bytes_done / self.bytes_total), 2)
        return 0.0 if self.documents_total == 0 else None

    @property
    def documents_per_second(self) -> float | None:
        if self.run_seconds <= 0 or not self.documents_seen:
            return None
        return round(self.documents_seen / self.run_seconds, 3)

    def to_json(self) -> str:
        raw = asdict(self)
        raw["kind"] = self.kind.value
        raw["state"] = self.state.value
        for name in ("created_at", "updated_at", "finished_at"):
            value = getattr(self, name)
            raw[name] = value.isoformat() if value is not None else None
        return json.dumps(raw)

    @classmethod
    def from_json(cls, data: str | bytes) -> Job:
        raw = json.loads(data)
        raw["kind"] = JobKind(raw["kind"])
        raw["state"] = JobState(raw["state"])
        raw["sources"] = tuple(JobSource.from_json(s) for s in raw["sources"])
        raw["errors"] = tuple(JobError(**e) for e in raw["errors"])
        for name in ("created_at", "updated_at", "finished_at"):
            raw[name] = datetime.fromisoformat(raw[name]) if raw.get(name) else None
        return cls(**raw)

    def with_origin(self, origin: str) -> Job:
        return replace(self, origin=origin)
