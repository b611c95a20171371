"""Uploads (app/graphql/http.py): a multipart body's files are spooled to the data dir's upload
folder as they arrive, past a small in-memory head, never held whole in memory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.requests import ClientDisconnect

from app.graphql.http import UPLOAD_SPOOL_BYTES, UploadMultiPartParser, _declares_multipart

BOUNDARY = "citadel-test-boundary"


def multipart(files: dict[str, bytes], fields: dict[str, str]) -> bytes:
    body = b""
    for name, value in fields.items():
        body += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, content in files.items():
        body += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode() + content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


async def chunks(body: bytes, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def parser(body: bytes, upload_dir: Path) -> UploadMultiPartParser:
    headers = Headers({"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    return UploadMultiPartParser(headers, chunks(body), upload_dir=upload_dir)


async def test_a_large_file_goes_to_the_upload_dir_and_a_small_one_stays_in_memory(tmp_path: Path) -> None:
    big = os.urandom(4 * UPLOAD_SPOOL_BYTES)
    form = await parser(multipart({"big": big, "small": b"tiny"}, {"operations": "{}"}), tmp_path).parse()
    try:
        large, small = form["big"], form["small"]
        assert isinstance(large, UploadFile) and isinstance(small, UploadFile)
        assert large.file._rolled and not small.file._rolled  # type: ignore[attr-defined]
        where = os.readlink(f"/proc/self/fd/{large.file.fileno()}")
        assert where.startswith(str(tmp_path)), where  # an unlinked file in the upload dir
        assert await large.read() == big and await small.read() == b"tiny"
        assert form["operations"] == "{}"
    finally:
        await form.close()


async def test_a_body_cut_off_mid_file_closes_the_spooled_file(tmp_path: Path) -> None:
    whole = multipart({"big": b"x" * (4 * UPLOAD_SPOOL_BYTES)}, {})

    async def hang_up() -> AsyncIterator[bytes]:  # the client goes away inside the file, past the spool
        async for chunk in chunks(whole[: len(whole) // 2]):
            yield chunk
        raise ClientDisconnect()

    headers = Headers({"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    opened_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(ClientDisconnect):
        await UploadMultiPartParser(headers, hang_up(), upload_dir=tmp_path).parse()
    still_open = []
    for fd in set(os.listdir("/proc/self/fd")) - opened_before:
        try:
            still_open.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed already
            continue
    assert [path for path in still_open if path.startswith(str(tmp_path))] == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-type", b"multipart/form-data; boundary=x")], True),
        ([(b"content-type", b"Multipart/Form-Data; boundary=x")], True),
        ([(b"content-type", b"application/json")], False),
        ([], False),
    ],
)
def test_multipart_is_read_from_the_raw_header(headers: list, expected: bool) -> None:
    assert _declares_multipart({"headers": headers}) is expected
