"""`RunDir` is the one owner of a run folder's file names: no other source file spells them."""

import stat
from pathlib import Path

import pytest

import tunelab
from tunelab.run_dir import RunDir, atomic_folder

NAMES = ["config", "metrics", "summary", "model_card", "loss_plot", "tensorboard", "checkpoints", "best"]
NAMES += ["staging", "adapter_config", "adapter_weights", "tokenizer_config"]
NAMES += ["compression", "quantized_weights", "teacher_answers"]


def spelled(name: str, text: str) -> bool:
    """A file name anywhere (prose included); a folder name as a string literal (`best` is a word too)."""
    return name in text if "." in name.lstrip(".") else f'"{name}"' in text


def test_no_other_module_spells_a_run_folder_file_name():
    names = {getattr(RunDir("."), attribute).name for attribute in NAMES}
    root = Path(tunelab.__file__).parent
    found = [
        f"{path.relative_to(root)}: {name}"
        for path in root.rglob("*.py")
        if path.name != "run_dir.py"
        for name in names - {"checkpoints"}  # the service's data dir has its own `checkpoints` folder
        if spelled(name, path.read_text())
    ]
    assert found == []


def test_reads_what_it_writes(tmp_path):
    run = RunDir(tmp_path)
    run.write_config({"model": "default", "lr": 0.1})
    run.write_summary({"steps": 3})
    run.write_adapter_config({"tunelab_method": "head"})
    assert run.read_config() == {"model": "default", "lr": 0.1}
    assert run.read_summary() == {"steps": 3} and run.is_finished() and run.is_adapter()
    assert run.read_adapter_config() == {"tunelab_method": "head"}
    assert run.read_metrics() == []


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "parent" / "out"
    with atomic_folder(out, mode=0o755) as folder:
        (folder / "a").write_text("1")
    assert [p.name for p in out.iterdir()] == ["a"] and stat.S_IMODE(out.stat().st_mode) == 0o755
    with pytest.raises(KeyboardInterrupt), atomic_folder(out) as folder:
        (folder / "b").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["a"]  # the old folder, untouched
    with atomic_folder(out) as folder:
        (folder / "c").write_text("2")
    assert [p.name for p in out.iterdir()] == ["c"]
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary or old folder left
