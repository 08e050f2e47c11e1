"""The `tunelab data` commands on a key's uploaded files, for the dashboard's Files pages: `validate`'s
issues with their lines, `report`'s figures (lengths, duplicates, personal data, leakage against another
of the key's files, groups) and `clean`, whose output is kept as a new file of the key beside a summary
of what it dropped and changed. Nothing here knows about requests."""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data.clean import clean_file
from ..data.config import CleanConfig, DataReportConfig
from ..data.errors import DataError
from ..data.formats import not_utf8
from ..data.groups import parse_groups
from ..data.pii import detectors, scan_texts
from ..data.report import bias, describe, full_text, leakage
from ..data.validate import ValidationReport, validate_file
from .deps import Service
from .errors import ApiError
from .jobs import MIN_EXAMPLES, data_error_message
from .paths import open_private
from .store import FileRow, new_id
from .upload import clean_filename

NEAR_THRESHOLD = DataReportConfig.near_threshold  # `data report`'s default
CHUNK = 2**20


@dataclass
class FileReport:
    """What `data validate` and `data report` say about a file; a part that could not be made is None, and
    `unreadable` or `report_error` says why."""

    validation: ValidationReport | None = None
    unreadable: str | None = None  # the file cannot be read at all (not UTF-8, no format we know)
    tokenizer: str | None = None  # the base model whose tokenizer counted the tokens; None: not counted
    stats: dict | None = None  # `data report`'s figures for the file
    duplicates: int = 0
    pii: dict[str, int] = field(default_factory=dict)  # kind -> items found
    detectors: list[str] = field(default_factory=list)
    leakage: dict | None = None  # the other file's prompts copied from this one's
    groups: dict | None = None  # attribute -> how often each group is mentioned (`data report --groups`)
    report_error: str | None = None
    cleaned: dict | None = None  # what `clean` dropped and changed, when this file is its output


def check_text(path: Path) -> None:
    """An upload the dashboard keeps is UTF-8 text and not empty (an empty file input sends an empty part).
    Read in chunks: a file may be as large as --max-upload-mb."""
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with path.open("rb") as f:
        if not f.read(1):
            raise ApiError(400, "choose a file to upload: the one sent is empty", param="file")
        f.seek(0)
        while True:
            chunk = f.read(CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:  # err.object: the decoder's few held bytes, then the chunk
                line += err.object.count(b"\n", 0, err.start)
                raise ApiError(400, f"line {line}: {not_utf8(err)}", param="file") from None
            if not chunk:
                return
            line += chunk.count(b"\n")


def loaded_tokenizer(service: Service) -> tuple[str | None, object | None]:
    """(name, tokenizer) of the first base model loaded already, else (None, None): loading a model only to
    count tokens would hold the page for a minute (the embedded one is dequantised on its first load)."""
    for name in service.settings.base_models:
        tokenizer = service.engine.loaded_tokenizer(name)
        if tokenizer is not None:
            return name, tokenizer
    return None, None


def file_report(
    service: Service, row: FileRow, against: FileRow | None = None, groups: str = ""
) -> FileReport:
    """Validate the file, then (when its records load) report on it: `against` is another file of the key
    whose prompts are checked for copies of this one's, `groups` YAML as for `data report --groups`."""
    base, tokenizer = loaded_tokenizer(service)
    result = FileReport(tokenizer=base, cleaned=cleaned_summary(service, row.id))
    path = str(service.data.file(row.id))
    try:
        result.validation = validate_file(path, tokenizer, min_examples=MIN_EXAMPLES)
        result.stats, examples, format = describe(path, tokenizer)
    except DataError as err:
        message = data_error_message(err)
        if result.validation is None:
            result.unreadable = message
        else:
            result.report_error = f"the report needs every record to load: {message}"
        return result
    result.duplicates = sum(issue.code == "duplicate_example" for issue in result.validation.issues)
    result.pii = dict(scan_texts(full_text(example) for example in examples).most_common())
    result.detectors = detectors()
    try:
        if against is not None:
            _, others, _ = describe(str(service.data.file(against.id)))
            result.leakage = leakage(examples, others, NEAR_THRESHOLD)
        if groups.strip():
            result.groups = bias(examples, format, parse_groups(groups, "groups"))
    except DataError as err:
        result.report_error = data_error_message(err)
    return result


def clean(service: Service, owner: str, row: FileRow) -> FileRow:
    """`data clean` (its defaults: repair, personal data masked, lengths, duplicates) on the file; the
    output becomes a new file of the key, `<name>.clean.jsonl`, listed once it is whole."""
    file_id = new_id("file-")
    partial, final = service.data.partial_upload(file_id), service.data.file(file_id)
    changes = partial.with_suffix(".changes.jsonl")  # clean_file's line-by-line log: not kept
    try:
        result = clean_file(service.data.file(row.id), partial, CleanConfig(), loaded_tokenizer(service)[1])
        partial.chmod(0o600)  # clean_file creates it with the umask's mode
        summary = {"source": row.id, "source_name": row.filename, "examples": result.examples,
                   "kept": result.kept, "dropped": dict(result.dropped.most_common()),
                   "changed": dict(result.changed.most_common()), "pii": dict(result.pii.most_common()),
                   "detectors": result.detectors, "length_unit": result.length_unit}  # fmt: skip
        with open_private(service.data.clean_summary(file_id)) as f:
            json.dump(summary, f)
        partial.replace(final)
    except DataError as err:
        raise ApiError(400, f"cannot clean {data_error_message(err)}", param="file") from err
    finally:
        partial.unlink(missing_ok=True)
        changes.unlink(missing_ok=True)
    name = clean_filename(Path(row.filename).stem + ".clean.jsonl")
    return service.store.add_file(file_id, owner, name, row.purpose, final.stat().st_size)


def cleaned_summary(service: Service, file_id: str) -> dict | None:
    path = service.data.clean_summary(file_id)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
