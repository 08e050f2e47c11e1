"""Split one data file into train/val/test files, copying records unchanged and reproducibly for a seed."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from .errors import DataError
from .formats import read_records


def split_file(
    path: str | Path,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    *,
    out_dir: str | Path,
) -> dict[str, Path]:
    """Write `train`, `val` and `test` files (a split of fraction 0 is skipped) and return their paths.

    JSONL and JSON-array inputs give `.jsonl` files, CSV gives `.csv` files with the header. Records are
    copied as they are, bad ones included, so splitting never changes the data; validate before or after.
    Within each split records keep their order in the input file.
    """
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"need val >= 0, test >= 0 and val + test < 1; got val={val}, test={test}")
    path = Path(path)
    if path.suffix.lower() == ".txt":
        raise DataError(
            "splitting plain text is not supported; split JSONL, JSON or CSV files", path=str(path)
        )
    records = read_records(path)
    if records.kind == "json" and records.records and records.records[0].error:
        raise DataError.from_issue(records.records[0].error, str(path))
    if not records.records:
        raise DataError("the file holds no records to split", path=str(path), code="empty_file")

    sizes = split_sizes(len(records.records), {"val": val, "test": test})
    order = list(range(len(records.records)))
    random.Random(seed).shuffle(order)
    suffix = ".csv" if records.kind == "csv" else ".jsonl"
    targets = {name: Path(out_dir) / f"{name}{suffix}" for name in sizes}
    # e.g. splitting data/train.jsonl into data/ would overwrite the input before it was all copied.
    if any(target.resolve() == path.resolve() for target in targets.values()):
        raise DataError(
            f"an output in {out_dir} would overwrite the input; choose another out_dir", path=str(path)
        )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = {}
    start = 0
    for name, target in targets.items():
        chosen = sorted(order[start : start + sizes[name]])
        start += sizes[name]
        lines = [records.records[i].raw for i in chosen]
        if records.kind == "csv":
            header = io.StringIO()
            csv.writer(header, lineterminator="").writerow(records.header or [])
            lines.insert(0, header.getvalue())
        target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        written[name] = target
    return written


def split_sizes(total: int, fractions: dict[str, float]) -> dict[str, int]:
    """Records per split: rounded fractions, at least one for each non-zero split while train keeps one."""
    sizes = {name: max(1, round(total * f)) for name, f in fractions.items() if f > 0}
    # Rounding tiny splits up to one record can leave train empty; take back from the largest split.
    while sizes and sum(sizes.values()) >= total:
        largest = max(sizes, key=sizes.get)
        sizes[largest] -= 1
    sizes = {name: n for name, n in sizes.items() if n > 0}
    return {"train": total - sum(sizes.values()), **sizes}
