"""Close the loop with feedback: chat with a model served by `tunelab serve`, rate and correct its answers
through the API, turn the feedback into training data (`tunelab data from-feedback`), and train with the
official `openai` client the usual two stages: a supervised job on the corrections (`--as sft`), then a DPO
job from that `ft:` model on the pairs (`--as dpo`: each correction preferred over the answer it corrects).
Then ask the tuned models the same questions again.

DPO alone from the base, at a learning rate high enough to learn 12 facts, drives both answers' log-probs
down and the model to stop at once (empty answers); learning the corrections first, then preferring them,
is the pipeline DPO was made for.

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

# Questions with one short right answer the embedded model does not give by itself; a job needs at least
# 10 examples (OpenAI's rule, which the service keeps).
CORRECTIONS = {
    "What is the name of our support bot?": "Our support bot is called Pip.",
    "Which day is the office closed?": "The office is closed on Wednesdays.",
    "What is the wifi password?": "The wifi password is tunelab-guest.",
    "Who do I ask about invoices?": "Ask Marta in accounts about invoices.",
    "What colour is our logo?": "Our logo is teal.",
    "How long is the lunch break?": "The lunch break is 45 minutes.",
    "Where is the meeting room?": "The meeting room is on the second floor.",
    "What is the project called?": "The project is called tunelab.",
    "When is the team meeting?": "The team meeting is on Mondays at 10.",
    "Which printer should I use?": "Use the printer by the kitchen.",
    "Where do I park my bike?": "Park your bike in the courtyard.",
    "What is the guest network called?": "The guest network is called tunelab-guest.",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path, api_key: str, *flags: str) -> tuple[subprocess.Popen, str]:
    """`tunelab serve` (with `flags`) on a free port, once it and its worker are up."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tunelab",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *flags,
    ]
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


def feedback_file(data_dir: Path, kind: str) -> Path:
    """`tunelab data from-feedback --as KIND` into a file beside the data dir."""
    out = data_dir.parent / f"{data_dir.name}-{kind}.jsonl"
    export = [sys.executable, "-m", "tunelab", "data", "from-feedback", "--data-dir", str(data_dir)]
    subprocess.run([*export, "--out", str(out), "--as", kind], check=True)
    return out


def wait_for_job(client: OpenAI, job, every_s: float = 2.0):
    """(the job once it has ended, the seconds waited); the script stops if it did not succeed."""
    started = time.monotonic()
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        time.sleep(every_s)
    if job.status != "succeeded":
        sys.exit(f"the job {job.id} {job.status}: {job.error}")
    return job, time.monotonic() - started


def train_job(client: OpenAI, model: str, data: Path, kind: str, hyperparameters: dict):
    """A fine-tuning job of `kind` (supervised or dpo) on `data`, waited for; its metric events printed."""
    uploaded = client.files.create(file=data.open("rb"), purpose="fine-tune")
    method = {"type": kind, kind: {"hyperparameters": hyperparameters}}
    job = client.fine_tuning.jobs.create(model=model, training_file=uploaded.id, method=method)
    job, seconds = wait_for_job(client, job)
    print(f"{kind} job {job.id} from {model}: {job.status} in {seconds:.0f} s")
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data[::-1]
    for event in [e for e in events if e.type == "metrics"][-3:]:
        print(f"  {event.message}")
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="the server's data dir (default: a temporary one)")
    parser.add_argument("--sft-epochs", type=int, default=8)
    parser.add_argument("--sft-lr-multiplier", type=float, default=10.0)
    parser.add_argument("--dpo-epochs", type=int, default=3)
    parser.add_argument("--dpo-lr-multiplier", type=float, default=1.0)
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

        sft = train_job(client, base, feedback_file(data_dir, "sft"), "supervised", {
            "n_epochs": args.sft_epochs, "batch_size": 4, "learning_rate_multiplier": args.sft_lr_multiplier,
        })  # fmt: skip
        dpo = train_job(client, sft.fine_tuned_model, feedback_file(data_dir, "dpo"), "dpo", {
            "beta": args.beta, "n_epochs": args.dpo_epochs, "batch_size": 4,
            "learning_rate_multiplier": args.dpo_lr_multiplier,
        })  # fmt: skip
        after_sft = {question: ask(client, sft.fine_tuned_model, question)[1] for question in CORRECTIONS}
        print("\n| question | correction | before | after SFT | after SFT then DPO |\n|---|---|---|---|---|")
        fixed = 0
        for question, correction in CORRECTIONS.items():
            _, after = ask(client, dpo.fine_tuned_model, question)
            fixed += after == correction
            print(f"| {question} | {correction} | {before[question]} | {after_sft[question]} | {after} |")
        print(f"\n{fixed}/{len(CORRECTIONS)} corrected prompts now get the corrected answer")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
