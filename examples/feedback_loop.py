"""Close the loop with feedback: chat with a model served by `tunelab serve`, rate and correct its answers
through the API, turn the feedback into preference pairs (`tunelab data from-feedback --as dpo`), train a
DPO job on them with the official `openai` client, and ask the tuned model the same questions again.

python examples/feedback_loop.py --data-dir /tmp/feedback-demo      # starts its own server, prints a table

Everything goes through the public interfaces a user has: the HTTP API (OpenAI's shapes plus tunelab's
`/v1/feedback`) and the `tunelab` command.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import OpenAI

# Questions with one short right answer the embedded model does not give by itself.
CORRECTIONS = {
    "What is the name of our support bot?": "Our support bot is called Pip.",
    "Which day is the office closed?": "The office is closed on Wednesdays.",
    "What is the wifi password?": "The wifi password is tunelab-guest.",
    "Who do I ask about invoices?": "Ask Marta in accounts about invoices.",
    "What colour is our logo?": "Our logo is teal.",
    "How long is the lunch break?": "The lunch break is 45 minutes.",
    "Where is the meeting room?": "The meeting room is on the second floor.",
    "What is the project called?": "The project is called tunelab.",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path, api_key: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "tunelab", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    env = os.environ | {"TUNELAB_API_KEY": api_key}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).json()["worker"]:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            sys.exit(f"tunelab serve exited with {server.returncode}")
        time.sleep(0.2)
    sys.exit("tunelab serve did not start within 120 s")


def ask(client: OpenAI, model: str, question: str):
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0
    )
    return reply.id, reply.choices[0].message.content.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="the server's data dir (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr-multiplier", type=float, default=10.0)
    parser.add_argument("--beta", type=float, default=0.1)
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="tunelab-feedback-"))
    api_key = "tl-feedback-demo"
    server, url = start_server(data_dir, api_key)
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key=api_key)
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120)
        base = client.models.list().data[0].id
        before = {}
        for question, correction in CORRECTIONS.items():
            completion_id, answer = ask(client, base, question)
            before[question] = answer
            feedback = {"completion_id": completion_id, "rating": -1, "correction": correction}
            http.post("/v1/feedback", json=feedback).raise_for_status()

        pairs = data_dir.parent / f"{data_dir.name}-pairs.jsonl"
        export = [sys.executable, "-m", "tunelab", "data", "from-feedback", "--data-dir", str(data_dir)]
        subprocess.run([*export, "--out", str(pairs), "--as", "dpo"], check=True)
        uploaded = client.files.create(file=pairs.open("rb"), purpose="fine-tune")
        hyperparameters = {
            "beta": args.beta, "n_epochs": args.epochs, "batch_size": 4,
            "learning_rate_multiplier": args.lr_multiplier,
        }  # fmt: skip
        job = client.fine_tuning.jobs.create(
            model=base, training_file=uploaded.id,
            method={"type": "dpo", "dpo": {"hyperparameters": hyperparameters}},
        )  # fmt: skip
        started = time.monotonic()
        finished = ("succeeded", "failed", "cancelled")
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in finished:
            time.sleep(2)
        print(f"DPO job {job.id}: {job.status} in {time.monotonic() - started:.0f} s")
        if job.status != "succeeded":
            sys.exit(f"the job {job.status}: {job.error}")
        for event in client.fine_tuning.jobs.list_events(job.id, limit=100).data[::-1]:
            if event.type == "metrics" or (event.data and "rewards/accuracies" in (event.data or {})):
                print(f"  {event.message}")

        print("\n| question | correction | before | after DPO |\n|---|---|---|---|")
        fixed = 0
        for question, correction in CORRECTIONS.items():
            _, after = ask(client, job.fine_tuned_model, question)
            fixed += after == correction
            print(f"| {question} | {correction} | {before[question]} | {after} |")
        print(f"\n{fixed}/{len(CORRECTIONS)} corrected prompts now get the corrected answer")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
