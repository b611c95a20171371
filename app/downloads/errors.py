"""Why a download failed. `reason` is a short stable word for events and metrics; `retryable`
says whether another attempt can help (a 500 can, a missing repo or a full disk cannot)."""

from __future__ import annotations

from app.errors import DependencyUnavailable


class DownloadError(DependencyUnavailable):
    def __init__(self, message: str, *, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message, reason=reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class HubUnreachable(DownloadError):
    def __init__(self, message: str, reason: str = "unreachable") -> None:
        super().__init__(message, reason=reason, retryable=True)


class HubHTTPError(DownloadError):
    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        # 408/429/5xx are the server's trouble and pass; anything else (404, 401, 403) will not.
        retryable = status in (408, 429) or status >= 500
        super().__init__(message, reason=f"http_{status}", retryable=retryable, retry_after=retry_after)
        self.status = status


class RepoNotFound(HubHTTPError):
    """The hub (or mirror) has no such repo or revision. The Hugging Face Hub answers 401 rather
    than 404 for a repo it does not show, and mirrors match names case-sensitively."""

    def __init__(self, repo_id: str, revision: str, endpoint: str, status: int) -> None:
        super().__init__(
            f"{endpoint} has no repo {repo_id!r} at revision {revision!r} (HTTP {status}). Check the repo id "
            "letter for letter, case included, as the hub lists it; the revision; that HF_ENDPOINT is the mirror "
            "you mean and that it mirrors this repo; and HF_TOKEN if the repo is private or gated.",
            status,
        )
        self.reason = self.extensions["reason"] = "repo_not_found"


class IntegrityError(DownloadError):
    """A file arrived with the wrong size or hash; it has been discarded."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason=reason, retryable=True)


class TruncatedFile(DownloadError):
    """The server ended the file early; what arrived is kept and the next attempt resumes it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="truncated", retryable=True)


class OfflineMode(DownloadError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason="offline", retryable=False)


class CacheNotWritable(DownloadError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason="cache_not_writable", retryable=False)


class InsufficientDisk(DownloadError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason="insufficient_disk", retryable=False)


class BrokenModel(DownloadError):
    """The files are all there and verified, yet the model does not load from them."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="load_failed", retryable=True)
