"""Streaming multipart upload: the file part goes straight to disk as it arrives, and an upload over the
limit is refused (413) as soon as it is known to be too big, never buffered whole. Starlette's form parser
spools every file in full before the handler runs, so this reads `request.stream()` itself. `store_upload`
keeps the file as one of a key's, for `POST /v1/files` and the dashboard's upload form alike."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from .deps import Service
from .errors import ApiError
from .paths import open_private
from .store import FileRow, new_id

PURPOSES = ("fine-tune",)
FIELD_LIMIT = 64 * 1024  # other form fields (purpose) are short
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file itself


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"file is larger than this server's upload limit of {limit:,} bytes "
        "(`tunelab serve --max-upload-mb`)",
        param="file",
        code="file_too_large",
    )


def clean_filename(name: str) -> str:
    """The name to show: its last path component, no control characters. It never becomes a path."""
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:255] or "upload.jsonl"


class _Parts:
    """Callbacks for python-multipart: the `file` part streams into `out`, other fields into memory."""

    def __init__(self, out, limit: int):
        self.out, self.limit = out, limit
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self.ended = False  # the closing boundary was read: the body is whole

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.part_begin,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_header_field": lambda data, start, end: setattr(
                self, "_header_field", self._header_field + data[start:end]
            ),
            "on_header_value": lambda data, start, end: setattr(
                self, "_header_value", self._header_value + data[start:end]
            ),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_end": lambda: setattr(self, "ended", True),
        }

    def part_begin(self) -> None:
        self._headers, self._name, self._value = {}, None, bytearray()

    def header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self.filename is not None:
                raise ApiError(
                    400, "upload one file per request (this one has several 'file' parts)", param="file"
                )
            self.filename = clean_filename(options.get(b"filename", b"").decode("utf-8", "replace"))

    def part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._name == "file":
            self.file_bytes += len(chunk)
            if self.file_bytes > self.limit:
                raise too_large(self.limit)
            self.out.write(chunk)
        else:
            self._value += chunk
            if len(self._value) > FIELD_LIMIT:
                raise ApiError(400, f"form field '{self._name}' is too long", param=self._name)

    def part_end(self) -> None:
        if self._name and self._name != "file":
            self.fields[self._name] = self._value.decode("utf-8", "replace")


async def receive_upload(request: Request, dest: Path, limit: int) -> tuple[dict[str, str], str, int]:
    """Write the `file` part to `dest`; return (other fields, the file's display name, its size)."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(400, "upload a file as multipart/form-data with fields 'file' and 'purpose'")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:
        raise too_large(limit)  # before reading a byte of it
    with open_private(dest, "wb") as out:
        parts = _Parts(out, limit)
        try:
            parser = MultipartParser(options[b"boundary"], parts.callbacks())
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except ValueError as err:  # python-multipart's parse errors: a bad boundary, garbled parts
            raise ApiError(
                400, f"the multipart body cannot be parsed: {err}", param="file", code="invalid_multipart"
            ) from None
    if not parts.ended:  # python-multipart's finalize() does not check this itself
        raise ApiError(
            400,
            "the multipart body ends before its closing boundary: the upload was cut short, nothing was kept",
            param="file",
            code="invalid_multipart",
        )
    if parts.filename is None:
        raise ApiError(400, "the upload has no 'file' part", param="file")
    return parts.fields, parts.filename, parts.file_bytes


async def store_upload(
    service: Service, owner: str, request: Request, check: Callable[[Path], None] | None = None
) -> FileRow:
    """Receive the request's file (`POST /v1/files` and the dashboard's form) and keep it as a new file of
    `owner`, held to --max-upload-mb as it streams in. `check` may refuse it (raise) before it is listed."""
    file_id = new_id("file-")
    final, partial = service.data.file(file_id), service.data.partial_upload(file_id)
    limit = int(service.settings.max_upload_mb * 2**20)
    try:
        fields, filename, size = await receive_upload(request, partial, limit)
        purpose = fields.get("purpose")
        if purpose not in PURPOSES:
            raise ApiError(
                400, f"purpose must be one of {', '.join(PURPOSES)} (got {purpose!r})", param="purpose"
            )
        if check is not None:
            check(partial)
        partial.replace(final)  # atomic: a file is listed only once it is whole on disk
    finally:
        partial.unlink(missing_ok=True)
    return service.store.add_file(file_id, owner, filename, purpose, size)
