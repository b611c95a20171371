"""GraphQL jobs: `ingestFiles` (uploads, the GraphQL multipart request spec), `startIngestJob`,
`cancelJob`, `job`, `jobs` and the `jobProgress` subscription. Thin: each resolver calls
app/services/jobs.py."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, AsyncGenerator, Optional

import strawberry
from strawberry.file_uploads import Upload

from app.domain.chunking import Chunking
from app.domain.jobs import Job as DomainJob
from app.domain.jobs import JobKind as DomainJobKind
from app.domain.jobs import JobState as DomainJobState
from app.graphql.context import Context
from app.graphql.convert import ingest_error_to_gql
from app.graphql.describe import described_enum
from app.graphql.scalars import JSON, Long
from app.graphql import types as t

Info = strawberry.Info[Context, None]

JobKind = described_enum(
    DomainJobKind,
    name="JobKind",
    description="What a job does",
    values={
        "INGEST": "Stores and indexes documents (startIngestJob, ingestFiles)",
        "REINDEX": "Builds a collection anew with another model (and chunking) and switches to it (reindexCollection)",
    },
)
JobState = described_enum(
    DomainJobState,
    name="JobState",
    description="Where a job stands",
    values={
        "QUEUED": "Waiting for a slot on its replica (CITADEL_INGEST__JOBS_AT_ONCE run at once)",
        "RUNNING": "Ingesting, batch by batch; a restarted replica resumes it after its last committed batch",
        "SUCCEEDED": "Every document was read: each is ingested or counted in documentsFailed (see errors)",
        "FAILED": "Stopped by an error that concerns the whole job (see message); committed batches stay",
        "CANCELLED": "Stopped by cancelJob; committed batches stay",
    },
)


@strawberry.type(description="A background job: an ingest of uploaded files or of many documents, with its progress")
class Job:
    id: strawberry.ID = strawberry.field(description="The job's id (a UUID)")
    kind: JobKind = strawberry.field(description="What it does")
    collection: str = strawberry.field(description="The collection it writes to")
    state: JobState = strawberry.field(description="Where it stands")
    documents_total: Optional[Long] = strawberry.field(description="Documents it holds (JSON Lines: non-blank lines; other files: one each), when known")
    documents_done: Long = strawberry.field(description="Documents stored (inserted, updated or unchanged) so far")
    documents_failed: Long = strawberry.field(description="Documents refused so far (see errors)")
    chunks_done: Long = strawberry.field(description="Vector points written so far: one per document, or one per chunk")
    bytes_total: Optional[Long] = strawberry.field(description="Bytes of its files (the documents of startIngestJob as JSON Lines), when known")
    bytes_done: Long = strawberry.field(description="Bytes of its files read and committed so far")
    percent: Optional[float] = strawberry.field(description="Documents done or failed out of documentsTotal, 0 to 100 (100 once SUCCEEDED); null when unknown")
    documents_per_second: Optional[float] = strawberry.field(description="Documents done or failed per second of running (all runs together); null before the first batch")
    message: Optional[str] = strawberry.field(description="How it ended: a summary, why it failed, or who cancelled it")
    replica: str = strawberry.field(description="The replica running it (CITADEL_REPLICA_ID): it resumes the job after a restart")
    created_at: dt.datetime = strawberry.field(description="When it was started (UTC)")
    updated_at: dt.datetime = strawberry.field(description="When it last changed (UTC)")
    finished_at: Optional[dt.datetime] = strawberry.field(description="When it ended (UTC); null while QUEUED or RUNNING")
    _errors: strawberry.Private[list[t.IngestError]]

    @strawberry.field(
        description="Refused documents, first ones first (index: the document's position in the job, every file in "
        "order); at most CITADEL_INGEST__JOB_MAX_ERRORS are kept"
    )
    def errors(
        self, first: Annotated[Optional[int], strawberry.argument(description="How many (at most all kept)")] = 20
    ) -> list[t.IngestError]:
        return self._errors[: max(0, first if first is not None else 20)]


def job_to_gql(job: DomainJob) -> Job:
    return Job(
        id=strawberry.ID(job.id),
        kind=job.kind,
        collection=job.collection,
        state=job.state,
        documents_total=job.documents_total,
        documents_done=job.documents_done,
        documents_failed=job.documents_failed,
        chunks_done=job.chunks_done,
        bytes_total=job.bytes_total,
        bytes_done=job.bytes_done,
        percent=job.percent,
        documents_per_second=job.documents_per_second,
        message=job.message,
        replica=job.replica,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        _errors=[ingest_error_to_gql(e) for e in job.errors],
    )


def _payload(documents: list[t.DocumentInput]) -> list[dict]:
    return [
        {
            "id": None if d.id is None else str(d.id),
            "text": d.text,
            "metadata": d.metadata,
            "vector": d.vector,
            "vector_base64": d.vector_base64,
        }
        for d in documents
    ]


async def ingest_files(
    info: Info,
    collection: Annotated[str, strawberry.argument(description="The collection's name (WRITE on it)")],
    files: Annotated[
        list[Upload],
        strawberry.argument(
            description="Files (multipart request): text/plain, text/markdown, text/html (visible text), application/pdf "
            "(its text) become one document each, id = the file name; application/x-ndjson holds one DocumentInput per "
            "line. The type is read from the content. At most CITADEL_LIMITS__MAX_UPLOAD_BYTES in all"
        ),
    ],
    metadata: Annotated[
        Optional[JSON],
        strawberry.argument(
            description="Merged into every document's metadata (after source, contentType, bytes and pages); "
            "`id` names the document of a single file"
        ),
    ] = None,
) -> Job:
    job = await info.context.services.jobs.start_files(collection, files, metadata, principal=info.context.principal)
    return job_to_gql(job)


async def start_ingest_job(
    info: Info,
    collection: Annotated[str, strawberry.argument(description="The collection's name (WRITE on it)")],
    documents: Annotated[
        list[t.DocumentInput],
        strawberry.argument(description="Any number of documents (within the request body limit), ingested in batches"),
    ],
) -> Job:
    job = await info.context.services.jobs.start_documents(collection, _payload(documents), principal=info.context.principal)
    return job_to_gql(job)


async def reindex_collection(
    info: Info,
    name: Annotated[str, strawberry.argument(description="The collection (ADMIN)")],
    model: Annotated[str, strawberry.argument(description="The embedding model of the catalog to move it to")],
    chunking: Annotated[
        Optional[t.ChunkingInput],
        strawberry.argument(description="The new version's chunking (in the new model's tokens); null: one vector per document"),
    ] = None,
) -> Job:
    wanted = None if chunking is None else Chunking(chunking.max_tokens, chunking.overlap_tokens or 0)
    job = await info.context.services.jobs.start_reindex(name, model, wanted, principal=info.context.principal)
    return job_to_gql(job)


async def cancel_job(info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="The job's id")]) -> Job:
    job = await info.context.services.jobs.cancel(str(id), info.context.principal)
    return job_to_gql(job)


async def job(info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="The job's id")]) -> Optional[Job]:
    found = await info.context.services.jobs.get(str(id), info.context.principal)
    return None if found is None else job_to_gql(found)


async def jobs(
    info: Info,
    collection: Annotated[Optional[str], strawberry.argument(description="Only this collection's jobs")] = None,
    state: Annotated[Optional[JobState], strawberry.argument(description="Only jobs in this state")] = None,
    first: Annotated[Optional[int], strawberry.argument(description="How many, newest first (at most 100)")] = 20,
) -> list[Job]:
    found = await info.context.services.jobs.list(
        info.context.principal, collection=collection, state=state, first=20 if first is None else first
    )
    return [job_to_gql(j) for j in found]


async def job_progress(
    info: Info,
    id: Annotated[Optional[strawberry.ID], strawberry.argument(description="One job (its stream ends with its final state)")] = None,
    collection: Annotated[Optional[str], strawberry.argument(description="Every job of this collection")] = None,
) -> AsyncGenerator[Job, None]:
    service = info.context.services.jobs
    async with service.progress(None if id is None else str(id), collection, info.context.principal) as changes:
        async for change in changes:
            yield job_to_gql(change)
