"""Multipart uploads streamed to the artifact store, never held in memory or spooled whole.

Starlette's ``request.form()`` spools every file part to a temporary file before the route
runs, so a 50 GB upload would fill the disk before any limit is checked. Here the body is fed
chunk by chunk to python-multipart's push parser; file parts go straight into a temp file in
the store while their sha256 is computed, and the upload is cut off with 413 the moment the
limit is passed (the temp file is deleted). Small text fields are kept in memory, capped.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

from fastapi import Request
from python_multipart.multipart import (
    DEFAULT_MAX_HEADER_SIZE as MAX_PART_HEADER,
)
from python_multipart.multipart import (
    MultipartParser,
    parse_options_header,
)
from starlette.requests import ClientDisconnect

from slimline.errors import InvalidInput
from slimline.service.errors import BadRequest, TooLarge
from slimline.service.store import ArtifactStore

MAX_FIELD_BYTES = 1024**2  # a text field (zoo name, config JSON)
MAX_PARTS = 8
HEAD_BYTES = 64 * 1024  # kept from each file for the cheap format checks
MAX_BOUNDARY = 70  # RFC 2046; python-multipart raises past 256


@dataclass
class ReceivedFile:
    field: str
    filename: str  # the client's name, reduced to its last component
    path: Path  # temp file in the store (fsynced)
    size: int
    sha256: str
    head: bytes

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class ReceivedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, ReceivedFile] = field(default_factory=dict)

    def discard(self) -> None:
        for f in self.files.values():
            f.discard()


def safe_filename(name: str) -> str:
    """The last path component of a client's file name ('../../etc/passwd' -> 'passwd')."""
    last = PureWindowsPath(PurePosixPath(name).name).name
    cleaned = "".join(c for c in last if c.isprintable() and c not in '/\\"').strip(". ")
    return cleaned[:255] or "upload"


class _Receiver:
    def __init__(self, store: ArtifactStore, max_file_bytes: int, file_fields: set[str]) -> None:
        self.store, self.max_file_bytes, self.file_fields = store, max_file_bytes, file_fields
        self.form = ReceivedForm()
        self.error: Exception | None = None
        self._headers: dict[bytes, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._parts = 0
        self._name = ""
        self._file: IO[bytes] | None = None
        self._rec: ReceivedFile | None = None
        self._hash: Any = None
        self._text = bytearray()
        self._file_total = 0

    def callbacks(self) -> Any:  # python-multipart's MultipartCallbacks TypedDict
        return {
            "on_part_begin": self.part_begin,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
        }

    def part_begin(self) -> None:
        self._headers, self._hname, self._hvalue = {}, b"", b""
        self._parts += 1
        if self._parts > MAX_PARTS and self.error is None:
            self.error = BadRequest(f"too many form parts (at most {MAX_PARTS})")

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname, self._hvalue = b"", b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._text = bytearray()
        self._file = None
        if self.error is not None:
            return
        if filename is None:
            return
        if self._name not in self.file_fields:
            accepted = ", ".join(sorted(self.file_fields))
            self.error = InvalidInput(
                f"unexpected file field {self._name!r}; expected {accepted}", field=self._name
            )
            return
        if self._name in self.form.files:
            self.error = InvalidInput(f"field {self._name!r} sent twice", field=self._name)
            return
        path = self.store.temp_path()
        self._rec = ReceivedFile(
            field=self._name,
            filename=safe_filename(filename.decode("utf-8", "replace")),
            path=path,
            size=0,
            sha256="",
            head=b"",
        )
        self.form.files[self._name] = self._rec  # registered first: discard() finds it
        self._file = open(path, "wb")  # noqa: SIM115 - closed in part_end / close()
        self._hash = hashlib.sha256()

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        chunk = data[start:end]
        if self._file is not None and self._rec is not None:
            self._file_total += len(chunk)
            if self._file_total > self.max_file_bytes:
                self.error = TooLarge(
                    f"upload is larger than the limit of {self.max_file_bytes} bytes",
                    field=self._name,
                    value=self._file_total,
                )
                return
            self._file.write(chunk)
            self._hash.update(chunk)
            if len(self._rec.head) < HEAD_BYTES:
                self._rec.head += chunk[: HEAD_BYTES - len(self._rec.head)]
            self._rec.size += len(chunk)
        else:
            self._text += chunk
            if len(self._text) > MAX_FIELD_BYTES:
                self.error = TooLarge(
                    f"form field {self._name!r} is larger than {MAX_FIELD_BYTES} bytes",
                    field=self._name,
                )

    def part_end(self) -> None:
        if self._file is not None and self._rec is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self._rec.sha256 = self._hash.hexdigest()
        elif self.error is None:
            try:
                self.form.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                self.error = InvalidInput(f"field {self._name!r} is not UTF-8", field=self._name)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def receive_multipart(
    request: Request, store: ArtifactStore, max_file_bytes: int, file_fields: set[str]
) -> ReceivedForm:
    """Read a multipart/form-data body: text fields in memory, files into the store's temp
    area. On any error every temp file is deleted before the error is raised."""
    ctype, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise BadRequest(
            "expected a multipart/form-data body (e.g. curl -F file=@model.pt2)",
            field="content-type",
        )
    if len(boundary) > MAX_BOUNDARY:
        raise BadRequest(
            f"multipart boundary is {len(boundary)} characters; at most {MAX_BOUNDARY} (RFC 2046)",
            field="content-type",
        )
    declared = request.headers.get("content-length")
    # Refuse at once what cannot fit: the file plus generous room for the form around it.
    room = max_file_bytes + MAX_PARTS * (MAX_FIELD_BYTES + 4096)
    if declared is not None and declared.isdigit() and int(declared) > room:
        raise TooLarge(
            f"upload of {declared} bytes is larger than the limit of {max_file_bytes} bytes",
            field=next(iter(sorted(file_fields))),
            value=int(declared),
        )
    receiver = _Receiver(store, max_file_bytes, file_fields)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
            if receiver.error is not None:
                raise receiver.error
        parser.finalize()
        if receiver.error is not None:
            raise receiver.error
    except Exception as exc:
        receiver.close()
        receiver.form.discard()
        if isinstance(exc, ClientDisconnect):
            raise BadRequest("the client disconnected before the upload was complete") from exc
        if isinstance(exc, ValueError | LookupError) and not isinstance(exc, InvalidInput):
            hint = ""
            if "header size" in str(exc):
                hint = (
                    f" (a part's header line, e.g. its file name, is over {MAX_PART_HEADER} bytes)"
                )
            raise BadRequest(f"malformed multipart body: {exc}{hint}") from exc
        raise
    receiver.close()
    return receiver.form
