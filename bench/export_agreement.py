"""How closely each export answers like the adapter it came from, on the demo's 50 held-out prompts.

Run `tunelab demo` first (it writes runs/demo/adapter and runs/demo/data/test.jsonl), then:

    python bench/export_agreement.py [--run runs/demo] [--out runs/demo/exports]

For `hf` it prints the largest logit difference between the merged model and the adapter; for `gguf`
(f32 and q8_0) it loads each file back with transformers (`gguf_file=`) and counts greedy answers equal
to the adapter's, and the exact match against the references. Sizes and times come from export.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tunelab.data import load_examples
from tunelab.demo import exact_match
from tunelab.export import ExportConfig, export
from tunelab.inference import generate, load_for_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--out", default="runs/demo/exports")
    args = parser.parse_args()
    adapter, out = Path(args.run) / "adapter", Path(args.out)
    test = load_examples(Path(args.run) / "data" / "test.jsonl")
    conversations = [e.messages for e in test]

    tuned, tokenizer = load_for_inference("default", str(adapter))
    reference = generate(tuned, tokenizer, conversations, max_new_tokens=40, batch_size=50)
    print(f"adapter: exact match {exact_match(reference, test):.1%}")

    hf = export(ExportConfig(out=str(out / "hf"), adapter=str(adapter), overwrite=True))
    merged = AutoModelForCausalLM.from_pretrained(hf.out)
    prompt = tokenizer.apply_chat_template(conversations[0][:-1], tokenize=False, add_generation_prompt=True)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        diff = (merged(**enc).logits - tuned(**enc).logits).abs().max().item()
    print(f"hf: max |logit diff| {diff:.2e}; {sum(hf.files.values()):.1f} MB; {hf.seconds} s")
    del merged

    for quant in ("f32", "q8_0"):
        result = export(ExportConfig(out=str(out / f"gguf-{quant}"), adapter=str(adapter), format="gguf",
                                     quant=quant, overwrite=True))  # fmt: skip
        name = next(f for f in result.files if f.endswith(".gguf"))
        start = time.time()
        back = AutoModelForCausalLM.from_pretrained(result.out, gguf_file=name, dtype=torch.float32)
        answers = generate(back, tokenizer, conversations, max_new_tokens=40, batch_size=50)
        same = sum(a == r for a, r in zip(answers, reference, strict=True))
        print(
            f"gguf {quant}: {same}/{len(test)} answers identical to the adapter's; exact match "
            f"{exact_match(answers, test):.1%}; {result.files[name]} MB; export {result.seconds} s, "
            f"load+answer {time.time() - start:.0f} s"
        )
        in_llama_cpp(Path(result.out) / name, None, conversations, reference, test, f"gguf {quant}")

    lora = export(ExportConfig(out=str(out / "gguf-lora"), adapter=str(adapter), format="gguf-lora",
                               quant="f32", overwrite=True))  # fmt: skip
    files = {
        kind: next(f for f in lora.files if f.endswith(f"-{kind}-f32.gguf")) for kind in ("base", "lora")
    }
    print(f"gguf-lora: base {lora.files[files['base']]} MB + adapter {lora.files[files['lora']]} MB")
    folder = Path(lora.out)
    in_llama_cpp(folder / files["base"], folder / files["lora"], conversations, reference, test, "gguf-lora")


def in_llama_cpp(model_file, lora_file, conversations, reference, test, label) -> None:
    """The same prompts answered by llama.cpp itself (llama-cpp-python; `make llama-cpp` builds it)."""
    try:
        import llama_cpp
    except ImportError:
        print(f"{label} in llama.cpp: skipped, llama-cpp-python is not installed (make llama-cpp)")
        return
    lora = {"lora_path": str(lora_file)} if lora_file else {}
    llm = llama_cpp.Llama(str(model_file), n_ctx=512, verbose=False, **lora)
    replies = [
        llm.create_chat_completion(messages=c[:-1], max_tokens=40, temperature=0) for c in conversations
    ]
    answers = [r["choices"][0]["message"]["content"].strip() for r in replies]
    same = sum(a == r for a, r in zip(answers, reference, strict=True))
    score = exact_match(answers, test)
    print(f"{label} in llama.cpp: {same}/{len(test)} identical to the adapter's; exact match {score:.1%}")


if __name__ == "__main__":
    main()
