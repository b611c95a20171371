"""A client for the Hugging Face Hub HTTP protocol (huggingface.co or any HF_ENDPOINT mirror).

It lists a revision's files (`/api/models/{repo}/revision/{rev}?blobs=true`, with HEAD on the
`resolve` URL for whatever the listing leaves out) and fetches files into `.partial` files with
per-file byte progress, resuming with HTTP Range and verifying size and hash.
huggingface_hub builds the URLs and headers; the transfer itself is ours because hf_hub_download
reports no progress to callers and cannot write into Citadel's cache layout.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote

import httpx
from huggingface_hub import constants, hf_hub_url
from huggingface_hub.utils import build_hf_headers, filter_repo_objects
from loguru import logger

from app.downloads.hashing import feed_file
from app.downloads.errors import (
    DownloadError,
    HubHTTPError,
    HubUnreachable,
    IntegrityError,
    OfflineMode,
    RepoNotFound,
    TruncatedFile,
)

if TYPE_CHECKING:
    from app.settings import Settings

ProgressCallback = Callable[[int], None]  # bytes of the current file on disk so far



@dataclass(frozen=True)
class RemoteFile:
    name: str  # path inside the repo, "/"-separated
    size: int | None = None
    sha256: str | None = None  # LFS files: the hub gives their sha256
    blob_id: str | None = None  # other files: the git blob sha1 of their content


@dataclass(frozen=True)
class RepoSnapshot:
    repo_id: str
    revision: str
    commit: str  # files are fetched at this commit so a moving branch cannot mix two versions
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int | None:
        if any(f.size is None for f in self.files):
            return None
        return sum(f.size or 0 for f in self.files)


class _Hashes:
    """sha256 of the file, plus the git blob sha1 when that is what the hub can check against."""

    def __init__(self, git_size: int | None) -> None:
        self.sha256 = hashlib.sha256()
        self.git = hashlib.sha1(f"blob {git_size}\0".encode()) if git_size is not None else None

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)


def _write(handle: BinaryIO, hashes: _Hashes, data: bytes) -> None:
    handle.write(data)
    hashes.update(data)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    return value.removeprefix("W/").strip('"') or None


class HubClient:
    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float,
        offline: bool = False,
        chunk_size: int = 1 << 20,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.offline = offline
        self.chunk_size = chunk_size
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> HubClient:
        return cls(settings.hf_endpoint, timeout=settings.downloads.timeout_seconds, offline=settings.hf_offline)

    def _http(self) -> httpx.AsyncClient:
        # Created on first use so that offline mode never even opens a connection pool.
        if self.offline:
            raise OfflineMode(f"offline mode is on (HF_HUB_OFFLINE); not contacting {self.endpoint}")
        if self._client is None:
            headers = build_hf_headers(library_name="citadel")
            headers["Accept-Encoding"] = "identity"  # byte ranges must address the file itself
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout), headers=headers, follow_redirects=True
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- listing ---------------------------------------------------------------------------

    async def snapshot(self, repo_id: str, revision: str, patterns: Sequence[str] = ()) -> RepoSnapshot:
        client = self._http()
        url = f"{self.endpoint}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
        async with self._translate(f"listing {repo_id}@{revision}"):
            response = await client.get(url, params={"blobs": "true"})
        if response.status_code in (401, 404):
            raise RepoNotFound(repo_id, revision, self.endpoint, response.status_code)
        self._raise_for_status(response, f"listing {repo_id}@{revision}")
        try:
            data = response.json()
            siblings_raw = data.get("siblings") or []
        except (ValueError, AttributeError) as error:
            raise DownloadError(
                f"listing {repo_id}@{revision}: {self.endpoint} answered something that is not a hub listing ({error})",
                reason="bad_response",
                retryable=True,
            ) from error
        commit = data.get("sha") or response.headers.get(constants.HUGGINGFACE_HEADER_X_REPO_COMMIT) or revision
        siblings = list(
            filter_repo_objects(siblings_raw, allow_patterns=list(patterns) or None, key=lambda s: s["rfilename"])
        )
        if not siblings:
            raise DownloadError(
                f"{repo_id}@{revision} has no files matching {list(patterns) or '*'} at {self.endpoint}",
                reason="no_files",
                retryable=False,
            )
        files = []
        for sibling in siblings:
            lfs = sibling.get("lfs") or {}
            remote = RemoteFile(
                name=sibling["rfilename"],
                size=lfs.get("size", sibling.get("size")),
                sha256=lfs.get("sha256"),
                blob_id=None if lfs else sibling.get("blobId"),
            )
            if remote.size is None or (remote.sha256 is None and remote.blob_id is None):
                remote = await self._head(repo_id, commit, remote)
            files.append(remote)
        return RepoSnapshot(repo_id=repo_id, revision=revision, commit=commit, files=tuple(files))

    async def _head(self, repo_id: str, commit: str, remote: RemoteFile) -> RemoteFile:
        """Fill size and hash from the resolve URL's headers, as huggingface_hub does: a redirect
        to the LFS store carries them in X-Linked-Size / X-Linked-Etag."""
        url = hf_hub_url(repo_id, remote.name, revision=commit, endpoint=self.endpoint)
        async with self._translate(f"HEAD {remote.name}"):
            response = await self._http().head(url, follow_redirects=False)
        if response.status_code >= 400:
            self._raise_for_status(response, f"HEAD {remote.name}")
        headers = response.headers
        size = headers.get(constants.HUGGINGFACE_HEADER_X_LINKED_SIZE) or headers.get("Content-Length")
        etag = _etag(headers.get(constants.HUGGINGFACE_HEADER_X_LINKED_ETAG) or headers.get("ETag"))
        sha256 = remote.sha256 or (etag if etag and len(etag) == 64 else None)
        blob_id = remote.blob_id or (etag if etag and len(etag) == 40 and not sha256 else None)
        return RemoteFile(
            name=remote.name,
            size=remote.size if remote.size is not None else (int(size) if size else None),
            sha256=sha256,
            blob_id=blob_id,
        )

    # -- transfer --------------------------------------------------------------------------

    async def download(
        self, snapshot: RepoSnapshot, remote: RemoteFile, partial: Path, on_progress: ProgressCallback
    ) -> str:
        """Fetch `remote` into `partial`, resuming what is there; returns the file's sha256.

        On a size or hash mismatch the partial file is deleted (its bytes cannot be trusted);
        on a dropped connection or a short body it is kept for the next attempt to resume.
        """
        client = self._http()
        partial.parent.mkdir(parents=True, exist_ok=True)
        offset = partial.stat().st_size if partial.exists() else 0
        if remote.size is not None and offset > remote.size:
            partial.unlink()
            offset = 0
        hashes = _Hashes(remote.size if remote.blob_id else None)
        if offset:
            await asyncio.to_thread(feed_file, partial, hashes.update)
        on_progress(offset)
        if remote.size is None or offset < remote.size:
            offset, hashes = await self._transfer(client, snapshot, remote, partial, offset, hashes, on_progress)
        return self._check(remote, partial, offset, hashes)

    async def _transfer(
        self,
        client: httpx.AsyncClient,
        snapshot: RepoSnapshot,
        remote: RemoteFile,
        partial: Path,
        offset: int,
        hashes: _Hashes,
        on_progress: ProgressCallback,
    ) -> tuple[int, _Hashes]:
        url = hf_hub_url(snapshot.repo_id, remote.name, revision=snapshot.commit, endpoint=self.endpoint)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        what = f"{snapshot.repo_id}/{remote.name}"
        async with self._translate(what, mid_transfer=True):
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416:
                    partial.unlink(missing_ok=True)
                    raise IntegrityError(
                        f"{what}: server refused to resume at byte {offset}; partial file discarded",
                        "range_not_satisfiable",
                    )
                self._raise_for_status(response, what)
                if offset and response.status_code != 206:
                    # The server ignored Range and sends the whole file: start over rather than append it.
                    logger.info("{} does not support resuming; fetching it from byte 0", self.endpoint)
                    offset = 0
                    hashes = _Hashes(remote.size if remote.blob_id else None)
                elif offset and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                    partial.unlink(missing_ok=True)
                    raise IntegrityError(
                        f"{what}: server answered Range {offset}- with "
                        f"{response.headers.get('Content-Range')!r}; partial file discarded",
                        "bad_range",
                    )
                done = offset
                with partial.open("ab" if offset else "wb") as handle:
                    buffer = bytearray()
                    try:
                        async for chunk in response.aiter_bytes():
                            buffer += chunk
                            if len(buffer) >= self.chunk_size:
                                await asyncio.to_thread(_write, handle, hashes, bytes(buffer))
                                done += len(buffer)
                                buffer.clear()
                                on_progress(done)
                    finally:
                        # Bytes that arrived before a failure are good bytes: keep them for resuming.
                        if buffer:
                            await asyncio.to_thread(_write, handle, hashes, bytes(buffer))
                            done += len(buffer)
                            on_progress(done)
        return done, hashes

    def _check(self, remote: RemoteFile, partial: Path, size: int, hashes: _Hashes) -> str:
        what = remote.name
        if remote.size is not None and size < remote.size:
            raise TruncatedFile(f"{what}: body ended at byte {size} of {remote.size}; will resume")
        if remote.size is not None and size != remote.size:
            partial.unlink(missing_ok=True)
            raise IntegrityError(f"{what}: got {size} bytes, expected {remote.size}; file discarded", "size_mismatch")
        digest = hashes.sha256.hexdigest()
        if remote.sha256 and digest != remote.sha256:
            partial.unlink(missing_ok=True)
            raise IntegrityError(
                f"{what}: sha256 {digest} does not match {remote.sha256}; file discarded", "hash_mismatch"
            )
        if remote.blob_id and hashes.git is not None and hashes.git.hexdigest() != remote.blob_id:
            partial.unlink(missing_ok=True)
            raise IntegrityError(
                f"{what}: git blob sha1 {hashes.git.hexdigest()} does not match {remote.blob_id}; file discarded",
                "hash_mismatch",
            )
        return digest

    # -- errors ----------------------------------------------------------------------------

    def _translate(self, what: str, mid_transfer: bool = False) -> _TranslateErrors:
        return _TranslateErrors(self.endpoint, what, mid_transfer)

    @staticmethod
    def _raise_for_status(response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 400:
            return
        hint = {401: "authentication required (set HF_TOKEN)", 403: "access denied", 404: "not found"}.get(status, "")
        raise HubHTTPError(
            f"{what}: HTTP {status}{' ' + hint if hint else ''} from {response.url.host}",
            status,
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )


class _TranslateErrors:
    """Turns httpx's transport errors into DownloadErrors that say what failed and whether to retry."""

    def __init__(self, endpoint: str, what: str, mid_transfer: bool) -> None:
        self.endpoint, self.what, self.mid_transfer = endpoint, what, mid_transfer

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> bool:
        if error is None or isinstance(error, DownloadError):
            return False
        if isinstance(error, httpx.TimeoutException):
            raise HubUnreachable(
                f"{self.what}: no answer from {self.endpoint} within the timeout ({type(error).__name__})", "timeout"
            ) from error
        if isinstance(error, httpx.ConnectError):
            raise HubUnreachable(f"{self.what}: cannot connect to {self.endpoint}: {error}", "unreachable") from error
        if isinstance(error, httpx.TransportError):
            reason = "connection_dropped" if self.mid_transfer else "unreachable"
            raise HubUnreachable(
                f"{self.what}: connection to {self.endpoint} broke: {error or type(error).__name__}", reason
            ) from error
        return False


def local_copy_matches(remote: RemoteFile, path: Path) -> str | None:
    """The sha256 of `path` when it is a correct copy of `remote` (blocking: hashes the file)."""
    if not path.is_file():
        return None
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return None
    hashes = _Hashes(size if remote.blob_id else None)
    feed_file(path, hashes.update)
    if remote.sha256 and hashes.sha256.hexdigest() != remote.sha256:
        return None
    if remote.blob_id and hashes.git is not None and hashes.git.hexdigest() != remote.blob_id:
        return None
    return hashes.sha256.hexdigest()
