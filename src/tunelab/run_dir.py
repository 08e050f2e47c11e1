"""The layout of a run folder (what `tunelab train --out` fills) and of any saved artefact folder.

Every file name a run folder holds is spelled here, and only here; everyone else asks a `RunDir` for the
path or for the contents. A method's artefact folder (an adapter, a checkpoint the service publishes)
uses the same names, so `RunDir` works on any of them. Beside it, the two file helpers every layer above
shares: `atomic_folder` (write a folder whole or not at all) and `file_hash` (a file's SHA-256).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from .errors import UserError


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # the run's own record

    @property
    def config(self) -> Path:
        """The resolved TrainConfig, reusable with `--config`."""
        return self.root / "tunelab.yaml"

    @property
    def metrics(self) -> Path:
        """One JSON record per line: kinds run, train, eval, summary."""
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        """Written last: its presence marks the run finished."""
        return self.root / "summary.json"

    @property
    def model_card(self) -> Path:
        return self.root / "README.md"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        """Resumable checkpoints, one `step-NNNNNNN` folder each."""
        return self.root / "checkpoints"

    @property
    def reference_logps(self) -> Path:
        """The start's log-probs of every item, for objectives scored against it (DPO): kept for resume."""
        return self.root / "reference" / "logps.safetensors"

    @property
    def best(self) -> Path:
        """The trained weights with the best val loss so far."""
        return self.root / "best"

    @property
    def staging(self) -> Path:
        """Where the final artefact is written before its files move into the run folder."""
        return self.root / ".tmp-final"

    # the artefact: adapter files (PEFT's names, which tunelab's own kinds reuse) and the tokenizer

    @property
    def adapter_config(self) -> Path:
        return self.root / "adapter_config.json"

    @property
    def adapter_weights(self) -> Path:
        return self.root / "adapter_model.safetensors"

    @property
    def tokenizer_config(self) -> Path:
        return self.root / "tokenizer_config.json"

    # what `tunelab prune`, `quantize` and `distill` add to a model folder

    @property
    def compression(self) -> Path:
        """What prune or quantize did: the source, what was kept and why, the sizes before and after."""
        return self.root / "compression.json"

    @property
    def quantized_weights(self) -> Path:
        """int8 dynamic-quantized weights, a torch state file: safetensors cannot hold packed int8 modules."""
        return self.root / "model_int8.pt"

    @property
    def teacher_answers(self) -> Path:
        """Sequence-level distillation: the teacher's answers to the prompts, the student's training data."""
        return self.root / "teacher_answers.jsonl"

    def is_quantized(self) -> bool:
        return self.quantized_weights.is_file()

    def is_adapter(self) -> bool:
        return self.adapter_config.is_file()

    def is_finished(self) -> bool:
        return self.summary.exists()

    def read_config(self) -> dict | None:
        return yaml.safe_load(self.config.read_text()) if self.config.is_file() else None

    def write_config(self, values: dict) -> None:
        self.config.write_text(yaml.safe_dump(values, sort_keys=False))

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines()]

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text())

    def write_summary(self, summary: dict) -> None:
        self.summary.write_text(json.dumps(summary, indent=2))

    def read_adapter_config(self) -> dict:
        if not self.is_adapter():
            raise UserError(
                f"{self.root} is not an adapter folder (no {self.adapter_config.name}); a whole model "
                "folder (full or selective tuning) goes in --model"
            )
        try:
            return json.loads(self.adapter_config.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{self.adapter_config}: not valid JSON: {err}") from err

    def write_adapter_config(self, values: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.adapter_config.write_text(json.dumps(values, indent=2))


def file_hash(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex: what a run's or a study's key holds of the data it read."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextmanager
def atomic_folder(out: str | Path, mode: int | None = None) -> Iterator[Path]:
    """A new empty folder beside `out` to write into. When the block ends it takes `out`'s place, replacing
    what is there with two renames (never half of either is visible); when the block raises, it is removed
    and `out` is left as it was. `mode`: its permissions (default: the umask's, as mkdir makes them)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mark = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = out.with_name(f".{out.name}.tmp-{mark}")
    tmp.mkdir()
    if mode is not None:
        tmp.chmod(mode)
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{mark}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
