"""Training data: read files in several formats into chat `Example`s, validate them, split them."""

from .errors import DataError, Issue
from .examples import Example, name_labels
from .formats import detect_format, load_documents, load_examples
from .split import split_file
from .validate import ValidationReport, print_report, validate_file

__all__ = [
    "DataError",
    "Example",
    "Issue",
    "ValidationReport",
    "detect_format",
    "load_documents",
    "load_examples",
    "name_labels",
    "print_report",
    "split_file",
    "validate_file",
]
