"""llama.cpp's own tools: its HF -> GGUF and LoRA -> GGUF converters, and `llama-quantize` for k-quants.

The converters are Python scripts in llama.cpp's source tree. The llama-cpp-python source distribution on
PyPI carries that tree under `vendor/llama.cpp/`, with the gguf-py the converters are written against. We
fetch it once with pip, keep only the converters (about 3 MB) in the cache, and run them as subprocesses:
their gguf-py never mixes with the `gguf` package tunelab imports. `TUNELAB_LLAMA_CPP` may point at a
llama.cpp checkout of your own instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..models.loading import cache_root
from ..run_dir import atomic_folder
from .config import CONVERTER_QUANTS, ExportError

LLAMA_CPP_PYTHON = "0.3.36"  # whose vendored llama.cpp converters we run
CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE")
CONVERTER_DIRS = ("conversion/", "gguf-py/")


def converter_dir(log=print) -> Path:
    """A folder holding llama.cpp's converters, fetched from PyPI into the cache the first time."""
    own = os.environ.get("TUNELAB_LLAMA_CPP")
    if own:
        if not (Path(own) / "convert_hf_to_gguf.py").is_file():
            raise ExportError(f"TUNELAB_LLAMA_CPP={own}: no convert_hf_to_gguf.py there")
        return Path(own)
    folder = cache_root() / "llama.cpp" / LLAMA_CPP_PYTHON
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    log(f"Fetching llama.cpp's converters once (llama-cpp-python {LLAMA_CPP_PYTHON} source from PyPI)")
    with tempfile.TemporaryDirectory() as tmp, atomic_folder(folder) as staging:
        _extract_converters(_download_sdist(Path(tmp)), staging)
    return folder


def _download_sdist(into: Path) -> Path:
    # `pip download` is the ordinary client for PyPI; --no-binary gets the source, which has the scripts.
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    command += [f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--dest", str(into)]
    result = subprocess.run(command, capture_output=True, text=True)
    sdists = list(into.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not sdists:
        raise ExportError(
            f"could not download llama-cpp-python {LLAMA_CPP_PYTHON}'s source from PyPI, which carries "
            f"llama.cpp's GGUF converters:\n{_tail(result.stderr)}\nWith a llama.cpp checkout of your own, "
            "set TUNELAB_LLAMA_CPP to its folder instead."
        )
    return sdists[0]


def _extract_converters(sdist: Path, into: Path) -> None:
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            relative = member.name.removeprefix(prefix)
            if relative != member.name and (
                relative in CONVERTER_FILES or relative.startswith(CONVERTER_DIRS)
            ):
                member.name = relative
                members.append(member)
        tar.extractall(into, members=members, filter="data")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_script(script: str, args: list[str], log) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, not ours
    command = [sys.executable, str(converter_dir(log) / script), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ExportError(f"llama.cpp's {script} failed:\n{_tail(result.stderr)}")


def hf_to_gguf(hf_dir: Path, out_file: Path, quant: str, log=print) -> Path:
    """Convert a Hugging Face model folder to one GGUF file; k-quants go through llama-quantize."""
    if quant in CONVERTER_QUANTS:
        _run_script(
            "convert_hf_to_gguf.py", [str(hf_dir), "--outfile", str(out_file), "--outtype", quant], log
        )
        return out_file
    tool = quantize_tool(quant)  # before the conversion: say what is missing at once
    f16 = out_file.with_name(out_file.stem + ".f16-tmp.gguf")
    hf_to_gguf(hf_dir, f16, "f16", log)
    result = subprocess.run([tool, str(f16), str(out_file), quant.upper()], capture_output=True, text=True)
    f16.unlink()
    if result.returncode != 0:
        raise ExportError(f"llama-quantize failed:\n{_tail(result.stdout + result.stderr)}")
    return out_file


def lora_to_gguf(adapter_dir: Path, base_dir: Path, out_file: Path, quant: str, log=print) -> Path:
    """A PEFT LoRA adapter as a llama.cpp LoRA GGUF (for `llama-server --lora`)."""
    if quant not in CONVERTER_QUANTS:
        raise ExportError(f"gguf-lora: --quant {quant}: a LoRA GGUF is one of {', '.join(CONVERTER_QUANTS)}")
    args = [str(adapter_dir), "--base", str(base_dir), "--outfile", str(out_file), "--outtype", quant]
    _run_script("convert_lora_to_gguf.py", args, log)
    return out_file


def quantize_tool(quant: str) -> str:
    tool = os.environ.get("TUNELAB_LLAMA_QUANTIZE") or shutil.which("llama-quantize")
    if not tool:
        raise ExportError(
            f"--quant {quant} needs llama.cpp's llama-quantize, which is not on PATH. Build it from "
            "llama.cpp's source (cmake -B build && cmake --build build --target llama-quantize -j) and "
            "put build/bin on PATH (or set TUNELAB_LLAMA_QUANTIZE to it); or use --quant q8_0, which "
            "needs no build."
        )
    return tool
