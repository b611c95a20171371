"""What a job's files hold (app/services/job_sources.py): the type from the content, the visible
text of HTML, the text and pages of a PDF, JSON Lines counted and read from an offset; and the
progress figures of a job row (app/domain/jobs.py)."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest

from app.domain.jobs import HTML, INVALID, MARKDOWN, NDJSON, PDF, TEXT, Job, JobError, JobKind, JobSource, JobState
from app.services.job_sources import (
    LineCounter,
    SourceProblem,
    copy_stream,
    count_json_lines,
    document_text,
    html_text,
    read_json_lines,
    sniff,
)
from tests.support.pdf import minimal_pdf

PAGE = b"""<!DOCTYPE html><html><head><title>Pump manual</title><style>.x { color: red } /* stylezebra */</style>
<script>var secret = "scriptzebra"; if (a < b) { document.write("<p>no</p>") }</script></head>
<body><h1>Priming</h1><p>Open the valve &amp; wait for the hum.</p><noscript>noscriptzebra</noscript>
<template><p>templatezebra</p></template><ul><li>One</li><li>Two</li></ul></body></html>"""


@pytest.mark.parametrize(
    ("head", "name", "declared", "expected"),
    [
        (minimal_pdf([["x"]]), "notes.txt", "text/plain", PDF),  # the content wins over the name and the type
        (b"\n  %PDF-1.7 ...", "scan", None, PDF),
        (b'{"text": "a"}\n{"text": "b"}\n', "data.txt", "text/plain", NDJSON),
        (b"anything", "bulk.jsonl", None, NDJSON),
        (b"anything", "bulk", "application/x-ndjson", NDJSON),
        (PAGE, "page.txt", None, HTML),
        (b"<p>fragment</p>", "page.html", None, HTML),
        (b"# Title\n\ntext", "readme.md", None, MARKDOWN),
        (b"# Title\n\ntext", "readme", "text/markdown", MARKDOWN),
        (b"plain words", "notes", None, TEXT),
        (b'{"a": 1} is not json lines because', "x", None, TEXT),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "photo.png", "image/png", INVALID),
        (b"just text", "fake.pdf", "application/pdf", INVALID),
    ],
)
def test_the_type_is_read_from_the_content(head: bytes, name: str, declared: str | None, expected: str) -> None:
    kind, reason = sniff(head, name, declared)
    assert kind == expected
    assert (reason is not None) == (expected == INVALID)


def test_html_keeps_the_visible_text_only() -> None:
    text = html_text(PAGE.decode())
    assert "Priming" in text and "Open the valve & wait for the hum." in text and "Pump manual" in text
    assert "One\n" in text and "Two" in text
    for hidden in ("stylezebra", "scriptzebra", "noscriptzebra", "templatezebra", "secret", "color"):
        assert hidden not in text


def test_a_pdf_gives_its_text_and_pages(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(minimal_pdf([["The QV-3319 pump (rev. 2)."], ["Page two."], ["Page three."]]))
    text, extra = document_text(path, PDF)
    assert extra == {"pages": 3}
    assert text.splitlines()[0] == "The QV-3319 pump (rev. 2)."
    assert "Page three." in text


def test_a_broken_pdf_is_a_source_problem(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF")
    with pytest.raises(SourceProblem, match="PDF"):
        document_text(path, PDF)


def test_text_that_is_not_utf8_is_a_source_problem(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"caf\xe9")
    with pytest.raises(SourceProblem, match="not UTF-8"):
        document_text(path, TEXT)


def test_non_blank_lines_are_counted_across_chunks() -> None:
    data = b'{"text": "a"}\n\n   \n{"text": "b"}\r\n{"text": "c"}'
    for size in (1, 2, 3, 7, len(data)):
        counter = LineCounter()
        for start in range(0, len(data), size):
            counter.feed(data[start : start + size])
        assert counter.finish() == 3, size


def test_json_lines_are_read_in_batches_from_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": str(i), "text": f"t{i}"}) for i in range(7)]
    lines.insert(3, "not json")
    lines.insert(5, "")
    path.write_text("\n".join(lines) + "\n")
    assert count_json_lines(path) == 8
    seen: list = []
    offset = 0
    while True:
        items, offset = read_json_lines(path, offset, 3, 1000)
        if not items:
            break
        seen += items
    assert offset == path.stat().st_size
    assert [i["id"] for i in seen if isinstance(i, dict)] == [str(i) for i in range(7)]
    assert [type(i) for i in seen].count(SourceProblem) == 1 and isinstance(seen[3], SourceProblem)


def test_an_over_long_line_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "x" * 500}) + "\n" + json.dumps({"text": "ok"}) + "\n")
    items, _ = read_json_lines(path, 0, 10, 100)
    assert isinstance(items[0], SourceProblem) and "over 100 bytes" in str(items[0])
    assert items[1] == {"text": "ok"}


def test_a_copy_past_the_limit_stops(tmp_path: Path) -> None:
    assert copy_stream(io.BytesIO(b"x" * 10), tmp_path / "a", 10) == 10
    with pytest.raises(SourceProblem, match="MAX_UPLOAD_BYTES"):
        copy_stream(io.BytesIO(b"x" * 11), tmp_path / "b", 10)


def _job(**changes) -> Job:
    now = dt.datetime.now(dt.timezone.utc)
    base = dict(
        id="00000000-0000-0000-0000-000000000001", kind=JobKind.INGEST, collection="c", state=JobState.RUNNING,
        replica="r", principal_kind="key", key_id="k", sources=(JobSource("00000", "a.jsonl", NDJSON, 100, 10),),
        metadata={"team": "x"}, documents_total=10, documents_done=3, documents_failed=1, chunks_done=6,
        bytes_total=100, bytes_done=40, cursor_source=0, cursor_offset=40, cursor_id=None,
        errors=(JobError(2, "d2", "BAD_INPUT", "text is missing or blank"),), message=None, run_seconds=2.0,
        created_at=now, updated_at=now, finished_at=None,
    )  # fmt: skip
    return Job(**{**base, **changes})


def test_progress_figures() -> None:
    job = _job()
    assert job.percent == 40.0 and job.documents_per_second == 2.0
    assert _job(state=JobState.SUCCEEDED).percent == 100.0
    assert _job(documents_total=None).percent == 40.0  # by bytes when the documents are not counted
    assert _job(documents_done=0, documents_failed=0).documents_per_second is None


def test_a_job_travels_as_json_unchanged() -> None:
    job = _job(finished_at=dt.datetime.now(dt.timezone.utc), state=JobState.CANCELLED)
    back = Job.from_json(job.to_json())
    assert back == job


def test_job_events_are_throttled_like_download_progress_and_state_changes_always_pass() -> None:
    from app.services.jobs import JobService
    from app.settings import DownloadSettings, Settings

    class Bus:
        def __init__(self) -> None:
            self.published: list[Job] = []

        def observe(self, listener) -> None:
            pass

        def publish(self, job: Job) -> Job:
            self.published.append(job)
            return job

    bus = Bus()
    settings = Settings(_env_file=None, downloads=DownloadSettings(progress_interval_seconds=3600))  # type: ignore[call-arg]
    service = JobService(settings, None, None, None, None, None, bus, None)
    service._publish(_job(state=JobState.RUNNING), final=True)  # started: a state change
    for done in range(4, 9):
        service._publish(_job(documents_done=done))  # progress within the interval: held back
    service._publish(_job(state=JobState.SUCCEEDED, documents_done=10))
    assert [(j.state, j.documents_done) for j in bus.published] == [(JobState.RUNNING, 3), (JobState.SUCCEEDED, 10)]
