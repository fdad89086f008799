"""`POST /v1/uploads`: stream a CSV or NACHA file to storage and enqueue it (SPEC §8).

The file goes chunk by chunk to the storage's upload sink (a file beside the SQLite
database; chunks in the PostgreSQL database, where any process can parse it) and is
never held in memory; the size limit is enforced while streaming. Parsing happens
later, in a worker.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from server import bulk_requests as domain
from server.api.common import (
    SETTINGS,
    STORE,
    idempotency_key,
    json_response,
    run_at_field,
    translate_domain_errors,
)
from server.api.render import is_parsing, render_summary
from server.constants import (
    FILE_READ_BYTES,
    MAX_COLUMNS_FIELD_BYTES,
    MAX_FILENAME_CHARS,
    MAX_PART_HEADER_BYTES,
)
from server.db.port import IdempotencyClaim, UploadSink
from server.http.auth import caller_of
from server.http.errors import Problem, field_error
from server.ingest.csv_options import DEFAULT_CSV_OPTIONS, InvalidCsvOptions, parse_csv_options
from server.ingest.csv_options import FIELDS as CSV_OPTION_FIELDS
from server.ingest.detect import detect_format
from server.ingest.json_checks import replace_lone_surrogates
from server.ingest.nacha_codes import NachaOption, UnknownNachaOptions, parse_nacha_options
from server.scheduling import run_at_text
from server.types import JSON, Mode, OnConflict, UploadFormat

DEFAULT_CSV_JSON = DEFAULT_CSV_OPTIONS.to_json()

TEXT_FIELDS = frozenset(
    {
        "data_stream_key",
        "on_conflict",
        "format",
        "nacha_options",
        *CSV_OPTION_FIELDS,
        "run_at",
        "mode",
    }
)
MAX_TEXT_FIELD_BYTES = 1024
# A mapping of a wide export is longer than the other fields (constants.py says how long).
FIELD_BYTES = {"columns": MAX_COLUMNS_FIELD_BYTES}
DETECTION_BYTES = 4096
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f]")


def sanitize_filename(name: str | None) -> str | None:
    """The client's file name for display only: no directories, no control characters."""
    if not name:
        return None
    # Some clients (aiohttp's among them) percent-encode the name in the header. Bytes
    # that are not UTF-8 reach us as lone surrogates, which SQLite cannot store.
    base = re.split(r"[\\/]", replace_lone_surrogates(unquote(name)))[-1]
    cleaned = _UNSAFE_FILENAME.sub("", base).strip()
    return cleaned[:MAX_FILENAME_CHARS] or None


class _ReceivedFile:
    def __init__(self, sink: UploadSink) -> None:
        self.sink = sink
        self.size = 0
        self.head = b""
        self.sha256 = hashlib.sha256()
        self.filename: str | None = None


async def _receive_file(part: BodyPartReader, received: _ReceivedFile, limit: int) -> None:
    while chunk := await part.read_chunk(FILE_READ_BYTES):
        received.size += len(chunk)
        if received.size > limit:
            raise Problem(
                413,
                "payload-too-large",
                f"the file is larger than the {limit // (1024 * 1024)} MiB limit",
            )
        if len(received.head) < DETECTION_BYTES:
            received.head += chunk[: DETECTION_BYTES - len(received.head)]
        received.sha256.update(chunk)
        await received.sink.write(chunk)
    received.filename = sanitize_filename(part.filename)


def _multipart_reader(request: web.Request) -> MultipartReader:
    """request.multipart(), except that a part's header lines may be longer than the
    request's own: the file name lives there, and a long one is cut, not refused."""
    return MultipartReader(
        request.headers,
        request.content,
        client_max_size=request.app[SETTINGS].max_upload_bytes,
        max_field_size=MAX_PART_HEADER_BYTES,
    )


async def _read_text(part: BodyPartReader) -> str:
    limit = FIELD_BYTES.get(part.name or "", MAX_TEXT_FIELD_BYTES)
    data = b""
    while len(data) <= limit and (piece := await part.read_chunk(limit + 1 - len(data))):
        data += piece
    if len(data) > limit:
        raise Problem(
            422,
            "validation-error",
            f"form field {part.name!r} is too long",
            errors=[field_error(f"/{part.name}", "too_long", f"at most {limit} bytes")],
        )
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Problem(
            422,
            "validation-error",
            f"form field {part.name!r} is not UTF-8",
            errors=[field_error(f"/{part.name}", "invalid", "not UTF-8")],
        ) from None


async def create_upload(request: web.Request) -> web.Response:
    caller = caller_of(request)
    if request.content_type != "multipart/form-data":
        raise Problem(
            415,
            "unsupported-media-type",
            "send the file as multipart/form-data with a part named 'file'",
        )
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    received: _ReceivedFile | None = None
    fields: dict[str, str] = {}
    try:
        try:
            reader = _multipart_reader(request)
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise Problem(
                        422, "validation-error", "nested multipart bodies are not supported"
                    )
                if part.name == "file" and received is None:
                    received = _ReceivedFile(await store.begin_upload())
                    await _receive_file(part, received, settings.max_upload_bytes)
                elif part.name in TEXT_FIELDS:
                    fields[part.name] = await _read_text(part)
                else:
                    await part.release()  # unknown parts are ignored, not buffered
        except ValueError as exc:  # malformed multipart framing
            raise Problem(400, "validation-error", f"malformed multipart body: {exc}") from None
        except LineTooLong:
            raise Problem(
                400,
                "validation-error",
                "malformed multipart body: a part's header line is longer than "
                f"{MAX_PART_HEADER_BYTES // 1024} KiB",
            ) from None
        except HttpProcessingError:
            # A part's headers that do not parse (aiohttp raises InvalidHeader, which is
            # not a ValueError): the client's framing is wrong, not the server.
            raise Problem(
                400, "validation-error", "malformed multipart body: a part's headers are invalid"
            ) from None
        form = await _validate(request, received, fields)
        assert received is not None
        upload_name = await received.sink.finish(form.upload_format)
        payload: JSON = {
            "sha256": received.sha256.hexdigest(),
            "format": form.upload_format,
            "on_conflict": form.on_conflict,
            "data_stream_key": form.stream_key,
            "filename": received.filename,
        }
        if form.nacha_options:  # absent when empty: fingerprints of earlier uploads still match
            payload["nacha_options"] = list(form.nacha_options)
        if form.csv_options is not None and form.csv_options != DEFAULT_CSV_JSON:
            payload["csv_options"] = form.csv_options  # absent when default, likewise
        if form.run_at is not None:  # likewise; the instant, not its spelling
            payload["run_at"] = run_at_text(form.run_at)
        if form.mode is not Mode.PARTIAL:  # absent when partial, for the same reason
            payload["mode"] = form.mode.value
        key = idempotency_key(request)
        claim = IdempotencyClaim(key, domain.fingerprint("uploads", payload)) if key else None
        with translate_domain_errors():
            row, replayed = await domain.submit_upload(
                store,
                caller.environment_id,
                upload_format=form.upload_format,
                upload_path=upload_name,
                filename=received.filename,
                data_stream_key=form.stream_key,
                on_conflict=form.on_conflict,
                nacha_options=form.nacha_options,
                csv_options=form.csv_options,
                claim=claim,
                run_at=form.run_at,
                mode=form.mode,
            )
    except BaseException:
        if received is not None:
            await received.sink.discard()
        raise
    body = {
        **render_summary(row),
        "source": row.source.value,
        "filename": row.filename,
        "parsing": is_parsing(row),
    }
    if replayed:
        await received.sink.discard()
        return json_response(body, status=200, headers={"Idempotent-Replayed": "true"})
    return json_response(body, status=202, headers={"Location": body["url"]})


@dataclass(frozen=True, slots=True)
class _UploadForm:
    upload_format: str
    on_conflict: str
    stream_key: str | None
    nacha_options: tuple[str, ...] | None  # None for CSV; () for NACHA without relaxations
    csv_options: JSON | None  # None for NACHA; CsvOptions.to_json() for CSV
    run_at: datetime | None  # SPEC §12: the file is parsed then, not before
    mode: Mode


def _nacha_options(text: str, upload_format: str | None, errors: list[JSON]) -> tuple[str, ...]:
    try:
        options = parse_nacha_options(text)
    except UnknownNachaOptions as exc:
        names = ", ".join(repr(name) for name in exc.names)
        errors.append(
            field_error(
                "/nacha_options",
                "unknown_option",
                f"unknown NACHA option {names}; the options are "
                + ", ".join(option.value for option in NachaOption),
            )
        )
        return ()
    if options and upload_format == "csv":
        errors.append(
            field_error("/nacha_options", "not_applicable", "nacha_options apply to NACHA files")
        )
    return tuple(option.value for option in options)


async def _validate(
    request: web.Request, received: _ReceivedFile | None, fields: dict[str, str]
) -> _UploadForm:
    errors: list[JSON] = []
    if received is None:
        raise Problem(
            422,
            "validation-error",
            "the form has no 'file' part",
            errors=[field_error("/file", "required", "attach the file as 'file'")],
        )
    if received.size == 0:
        raise Problem(
            422,
            "validation-error",
            "the uploaded file is empty",
            errors=[field_error("/file", "empty", "the file has no bytes")],
        )
    # A field sent empty is an error, not "absent": `format=` most likely means a form
    # or script that failed to fill it in, and guessing could parse a file the wrong way.
    # Leave a field out to get its default (README, "Uploads").
    errors.extend(
        field_error(f"/{name}", "empty", f"{name} is empty; send a value or leave the field out")
        for name in sorted(TEXT_FIELDS)
        if fields.get(name) == ""
    )
    upload_format = fields.get("format", detect_format(received.head))
    if upload_format not in frozenset(UploadFormat) and upload_format != "":
        errors.append(field_error("/format", "invalid_choice", "format must be csv or nacha"))
    on_conflict = fields.get("on_conflict", "skip")
    if on_conflict not in frozenset(OnConflict) and on_conflict != "":
        errors.append(
            field_error("/on_conflict", "invalid_choice", "on_conflict must be skip or error")
        )
    mode = fields.get("mode", Mode.PARTIAL)
    if mode not in frozenset(Mode) and mode != "":
        errors.append(field_error("/mode", "invalid_choice", "mode must be partial or atomic"))
    stream_key = fields.get("data_stream_key") or None
    if stream_key is None and upload_format == "nacha":
        errors.append(
            field_error(
                "/data_stream_key", "required", "data_stream_key is required for NACHA files"
            )
        )
    if stream_key is not None:
        caller = caller_of(request)
        if await request.app[STORE].get_data_stream(caller.environment_id, stream_key) is None:
            errors.append(
                field_error(
                    "/data_stream_key",
                    "unknown_data_stream",
                    f"no data stream with key {stream_key!r}",
                )
            )
    options = _nacha_options(fields.get("nacha_options", ""), upload_format, errors)
    csv_options = _csv_options(fields, upload_format, errors)
    run_at = run_at_field(fields["run_at"], errors) if fields.get("run_at") else None
    if errors:
        raise Problem(422, "validation-error", "the upload is not valid", errors=errors)
    return _UploadForm(
        upload_format,
        on_conflict,
        stream_key,
        options if upload_format == "nacha" else None,
        csv_options if upload_format == "csv" else None,
        run_at,
        Mode(mode),
    )


def _csv_options(fields: dict[str, str], upload_format: str, errors: list[JSON]) -> JSON:
    """The CSV options (SPEC §15) as stored; on a NACHA file any of them is a mistake."""
    given = {name: fields[name] for name in CSV_OPTION_FIELDS if fields.get(name)}
    if upload_format == "nacha":
        errors.extend(
            field_error(f"/{name}", "not_applicable", f"{name} applies to CSV files only")
            for name in given
        )
        return DEFAULT_CSV_JSON
    try:
        return parse_csv_options(given).to_json()
    except InvalidCsvOptions as exc:
        errors.extend(field_error(p.pointer, p.code, p.message) for p in exc.problems)
        return DEFAULT_CSV_JSON
