"""Many users at once on `tunelab serve`: concurrent chats batched across two `ft:` adapters and the base.

Runs `tunelab serve` on the embedded model as its own process, with two LoRA adapters published as `ft:`
models (random weights unless --adapter is given twice), and measures over HTTP:
  1. each of N 32-token greedy chats alone, one after another; then all N at once (a third each on the
     base and the two adapters): the wall time against one alone, and whether every answer is identical
     to its sequential one;
  2. `GET /v1/models` latency while the N chats run;
  3. time to first token of a streamed chat with a ~100-token prompt on an idle server (p50 of 20), on
     the base and on an adapter, and the cost of switching adapters between requests.

python bench/serve_batching.py [--n 16] [--max-batch 16]   (--max-batch 1: one sequence at a time)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

KEY = {"Authorization": "Bearer bench-key"}
LONG_PROMPT = " ".join(
    ["Tell me about the history of the city and its river, its bridges and its people."] * 6
)


def random_lora(folder: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    from tunelab.models import load_model

    torch.manual_seed(seed)
    model, _ = load_model("default")
    peft = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.002)  # changes the answers without making them noise
    peft.save_pretrained(folder)
    return folder


def publish(data_dir: Path, adapter: Path, name: str) -> str:
    """A finished job whose run folder holds `adapter`, and its model `name`, written before the server
    starts (so its worker has nothing to train)."""
    from tunelab.service.paths import DataDir
    from tunelab.service.settings import owner_of
    from tunelab.service.store import Store, new_id, now

    data = DataDir(data_dir).create()
    job_id = new_id("ftjob-")
    Store(data.db).add_job(
        {"id": job_id, "owner": owner_of("bench-key"), "model": "base", "model_root": "base",
         "training_file": "file-none", "hyperparameters": "{}", "tunelab": "{}", "seed": 0,
         "status": "succeeded", "created_at": now(), "fine_tuned_model": name}
    )  # fmt: skip
    shutil.copytree(adapter, data.run_dir(job_id))
    Store(data.db).add_model(name, owner_of("bench-key"), job_id)
    return name


def chat(client: httpx.Client, model: str, content: str, max_tokens: int) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    body |= {"max_tokens": max_tokens, "temperature": 0}
    reply = client.post("/v1/chat/completions", headers=KEY, json=body, timeout=600)
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]["content"]


def first_token_s(client: httpx.Client, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 4}
    body |= {"temperature": 0, "stream": True}
    start = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", headers=KEY, json=body, timeout=600) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                return time.perf_counter() - start
    raise RuntimeError("no token came")


def serve(data_dir: Path, max_batch: int, n: int) -> tuple[subprocess.Popen, str]:
    """`tunelab serve` as its own process, as users run it: the bench's clients do not share its GIL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tunelab", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    command += ["--api-key", "bench-key", "--base-model", "base=default", "--max-batch", str(max_batch)]
    command += ["--max-generations-per-key", str(max(8, n))]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="concurrent chats")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--adapter", action="append", help="a LoRA adapter folder (give two)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    adapters = [Path(a) for a in args.adapter or []] or [random_lora(root / f"lora{i}", i) for i in (1, 2)]
    models = ["base"] + [publish(root / "data", a, f"ft:base:bench::{i}") for i, a in enumerate(adapters)]
    server, url = serve(root / "data", args.max_batch, args.n)
    client = httpx.Client(base_url=url)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; max batch {args.max_batch}")

    chats = [
        (models[i % 3], f"Write a short note number {i} about {w}.")
        for i, w in enumerate("abcdefghijklmnopqrstuvwxyz"[: args.n])
    ]
    for model in models:
        chat(client, model, "warm up", 4)
    alone_s, sequential = [], []
    for model, content in chats:
        start = time.perf_counter()
        sequential.append(chat(client, model, content, args.max_tokens))
        alone_s.append(time.perf_counter() - start)
    one = statistics.median(alone_s)

    models_s, stop = [], threading.Event()

    def poll_models() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            client.get("/v1/models", headers=KEY).raise_for_status()
            models_s.append(time.perf_counter() - start)
            time.sleep(0.05)

    poller = threading.Thread(target=poll_models)
    start = time.perf_counter()
    poller.start()
    with ThreadPoolExecutor(args.n) as pool:
        together = list(
            pool.map(lambda c: chat(httpx.Client(base_url=url), c[0], c[1], args.max_tokens), chats)
        )
    wall = time.perf_counter() - start
    stop.set()
    poller.join()
    same = sum(a == b for a, b in zip(sequential, together, strict=True))
    print(f"one {args.max_tokens}-token chat alone: {one:.2f} s (median of {len(chats)})")
    print(f"{args.n} at once (base + 2 adapters): {wall:.2f} s = {wall / one:.1f}x one alone")
    print(f"answers identical to the sequential ones: {same}/{args.n}")
    models_p50 = statistics.median(models_s) * 1000
    print(f"GET /v1/models under that load: p50 {models_p50:.0f} ms ({len(models_s)} calls)")

    for model in models:
        first_token_s(client, model)
    base = [first_token_s(client, "base") for _ in range(20)]
    adapter = [first_token_s(client, models[1]) for _ in range(20)]
    switching = [first_token_s(client, models[1 + i % 2]) for i in range(20)]
    print(
        f"first token, ~100-token prompt, idle: base p50 {statistics.median(base) * 1000:.0f} ms, "
        f"adapter p50 {statistics.median(adapter) * 1000:.0f} ms"
    )
    switch = statistics.median(switching) - statistics.median(adapter)
    print(f"adapter switch (alternating two adapters vs one): {switch * 1000:+.0f} ms p50")
    server.terminate()
    server.wait()


if __name__ == "__main__":
    main()
