"""A job's files: what each holds (decided from its content, the name and declared type only
breaking ties), the text of one-document files, and JSON Lines read a batch at a time from a byte
offset (so a resumed job starts after its last committed batch).

- PDF: pypdf. Pure Python (no system library to install, works wherever Citadel's wheels do),
  BSD-licensed, actively maintained (the continuation of PyPDF2), and reads the text layer page by
  page, which is all a text index needs; pdfminer.six reads layouts more faithfully but is slower
  and heavier, PyMuPDF needs a binary wheel under the AGPL.
- HTML: the standard library's html.parser, a real tokenizer: the visible text only, never the
  contents of script, style, template or noscript elements, entities decoded.

Everything here blocks (file reads, parsing): the job service calls it through asyncio.to_thread.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, BinaryIO

from app.domain.jobs import HTML, INVALID, MARKDOWN, NDJSON, PDF, TEXT

HEAD_BYTES = 64 * 1024  # what sniffing reads
COPY_CHUNK = 1 << 20

_NDJSON_NAMES = (".jsonl", ".ndjson", ".jsonlines")
_NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/json-lines", "application/jsonlines")
_HTML_NAMES = (".html", ".htm", ".xhtml")
_MARKDOWN_NAMES = (".md", ".markdown", ".mdown", ".mkd")
_HTML_START = re.compile(rb"^\s*(<!--.*?-->\s*)*(<!doctype\s+html|<html[\s>]|<head[\s>]|<body[\s>])", re.I | re.S)


class SourceProblem(Exception):
    """A file that cannot become documents; its message is for the client (BAD_INPUT)."""


def sniff(head: bytes, name: str, declared: str | None) -> tuple[str, str | None]:
    """(content type, reason when INVALID) from a file's first bytes; the name and the declared
    type only choose between kinds the content allows."""
    lower = name.lower()
    declared = (declared or "").split(";")[0].strip().lower()
    if head.lstrip()[:5] == b"%PDF-":
        return PDF, None
    if declared == PDF or lower.endswith(".pdf"):
        return INVALID, f"{name!r} is named or declared a PDF but its content is not one (no %PDF- header)"
    text = _utf8_head(head)
    if text is None:
        return INVALID, (
            f"{name!r} is binary content that is not a PDF (nor UTF-8 text): supported are text/plain, "
            "text/markdown, text/html, application/pdf and application/x-ndjson"
        )
    if lower.endswith(_NDJSON_NAMES) or declared in _NDJSON_TYPES or _looks_like_json_lines(text):
        return NDJSON, None
    if declared == HTML or lower.endswith(_HTML_NAMES) or _HTML_START.match(head):
        return HTML, None
    if declared == MARKDOWN or lower.endswith(_MARKDOWN_NAMES):
        return MARKDOWN, None
    return TEXT, None


def _utf8_head(head: bytes) -> str | None:
    for cut in range(4):  # the head may end inside a multi-byte character
        try:
            return head[: len(head) - cut].decode("utf-8-sig")
        except UnicodeDecodeError:
            continue
    return None


def _looks_like_json_lines(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    complete = lines[:-1] if len(lines) > 1 else lines  # the last may be cut by the head
    if not complete:
        return False
    for line in complete[:3]:
        try:
            value = json.loads(line)
        except ValueError:
            return False
        if not isinstance(value, dict):
            return False
    return True


class LineCounter:
    """Counts non-blank lines of a stream fed in chunks (the documents of a JSON Lines file)."""

    def __init__(self) -> None:
        self.lines = 0
        self._open_line_has_text = False

    def feed(self, chunk: bytes) -> None:
        parts = chunk.split(b"\n")
        for i, part in enumerate(parts):
            if part.strip():
                self._open_line_has_text = True
            if i < len(parts) - 1:  # a newline ends this line
                self.lines += self._open_line_has_text
                self._open_line_has_text = False

    def finish(self) -> int:
        return self.lines + self._open_line_has_text


def count_json_lines(path: Path) -> int:
    counter = LineCounter()
    with path.open("rb") as f:
        while chunk := f.read(COPY_CHUNK):
            counter.feed(chunk)
    return counter.finish()


def copy_stream(source: BinaryIO, target: Path, limit: int) -> int:
    """Copy a spooled upload to `target` chunk by chunk; SourceProblem past `limit` bytes."""
    size = 0
    with target.open("wb") as out:
        while chunk := source.read(COPY_CHUNK):
            size += len(chunk)
            if size > limit:
                raise SourceProblem(f"the upload is over the limit of {limit} bytes (CITADEL_LIMITS__MAX_UPLOAD_BYTES)")
            out.write(chunk)
    return size


def read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(HEAD_BYTES)


# -- one-document files ---------------------------------------------------------------------


class _VisibleText(HTMLParser):
    HIDDEN = {"script", "style", "template", "noscript", "head"}
    KEPT_IN_HEAD = {"title"}
    BLOCKS = {
        "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section",
        "article", "header", "footer", "blockquote", "pre", "hr", "title", "dd", "dt", "figcaption", "main", "nav",
    }  # fmt: skip
    VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden: list[str] = []  # open hidden elements (script, style...)
        self._title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "body" and "head" in self._hidden:  # a head never closed ends where the body starts
            self._hidden = [t for t in self._hidden if t != "head"]
        if tag in self.HIDDEN:
            self._hidden.append(tag)
        elif tag in self.KEPT_IN_HEAD:
            self._title = True
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN and tag in self._hidden:
            while self._hidden and self._hidden.pop() != tag:
                pass
        elif tag in self.KEPT_IN_HEAD:
            self._title = False
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden or (self._title and self._hidden == ["head"]):
            self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    return _tidy("".join(parser.parts))


def _tidy(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.replace("\x00", "").splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def pdf_text(path: Path) -> tuple[str, int]:
    """The text layer of a PDF, page by page, and its number of pages."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise SourceProblem("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except SourceProblem:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise SourceProblem(f"the PDF could not be read ({type(exc).__name__}: {exc})") from None
    return _tidy("\n\n".join(pages)), len(pages)


def document_text(path: Path, content_type: str) -> tuple[str, dict[str, Any]]:
    """The text of a one-document file and what its metadata gains (PDF: pages)."""
    if content_type == PDF:
        text, pages = pdf_text(path)
        return text, {"pages": pages}
    raw = path.read_bytes()
    try:
        decoded = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceProblem(f"the file is not UTF-8 text (byte {exc.start})") from None
    if content_type == HTML:
        return html_text(decoded), {}
    return decoded.replace("\x00", ""), {}


# -- JSON Lines -----------------------------------------------------------------------------


def read_json_lines(path: Path, offset: int, max_documents: int, max_line_bytes: int) -> tuple[list[Any], int]:
    """Up to `max_documents` non-blank lines from byte `offset`: each a parsed value, or a
    SourceProblem for a line that is not JSON (or longer than `max_line_bytes`); and the offset
    after the last line read (the end of the file when all is read)."""
    items: list[Any] = []
    with path.open("rb") as f:
        f.seek(offset)
        while len(items) < max_documents:
            line = f.readline(max_line_bytes + 1)
            if not line:
                break
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while (rest := f.readline(COPY_CHUNK)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the over-long line
                items.append(SourceProblem(f"the line is over {max_line_bytes} bytes"))
                continue
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except (ValueError, RecursionError) as exc:
                items.append(SourceProblem(f"the line is not JSON ({exc})"))
        return items, f.tell()
