"""What goes wrong with training files: `DataError` (raised by loaders), `Issue` (listed by the validator)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


class DataError(UserError, ValueError):
    """A training file that cannot be read; the message names the file, line and field.

    `code` is one of the validation classes in `tunelab.data.validate` (for example `invalid_json`), so a
    caller can tell kinds of failure apart without parsing the message.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        line: int | None = None,
        field: str | None = None,
        code: str = "data_type",
    ):
        if field and field not in message:
            message = f"{message} (field {field!r})"
        where = path + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = message  # without the path: for those who must not see where the file is
        self.path = path
        self.line = line
        self.field = field
        self.code = code

    @classmethod
    def from_issue(cls, issue: Issue, path: str) -> DataError:
        return cls(issue.message, path=path, line=issue.line, field=issue.field, code=issue.code)


@dataclass
class Issue:
    """One problem found in a training file; `line` is None for file-level problems."""

    line: int | None
    code: str
    message: str
    field: str | None = None
