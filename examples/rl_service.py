"""The demo task as a reinforcement fine-tuning job through the service, with the official `openai` client,
as a team moving off OpenAI's fine-tuning would run it: the grader checked (`graders.validate`) and tried
on an answer (`graders.run`), a `method: reinforcement` job with it, its events, and the tuned adapter
graded on the 50 held-out rows with `tunelab eval --grader`.

python examples/rl_service.py --data-dir /tmp/rl-service     # starts `tunelab serve --python-graders`

The grader and the rows are examples/rl_demo.py's; python graders run only because the operator (this
script) starts the server with --python-graders, each in tunelab's sandbox.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from feedback_loop import start_server, wait_for_job
from openai import OpenAI
from rl_demo import FIELDS, REPORT, rl_rows, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="the server's data dir (default: a temporary one)")
    parser.add_argument("--train-rows", type=int, default=40, help="prompts the job trains on (4 per step)")
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="tunelab-rl-"))
    files = data_dir.parent / f"{data_dir.name}-files"
    files.mkdir(parents=True, exist_ok=True)
    train = write(files / "train.jsonl", rl_rows(args.train_rows, 1))
    val = write(files / "val.jsonl", rl_rows(10, 3))
    test = write(files / "test.jsonl", rl_rows(50, 2))
    api_key = "tl-rl-demo"
    server, url = start_server(data_dir, api_key, "--python-graders")
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key=api_key)
        graders = client.fine_tuning.alpha.graders
        print("graders.validate:", graders.validate(grader=FIELDS).grader.name)
        row = json.loads(test.read_text().splitlines()[0])
        for sample in (row["answer"], row["answer"][:-1], "I cannot say."):
            ran = graders.run(grader=FIELDS, model_sample=sample, item=row)
            print(f"graders.run on {sample!r}: reward {ran.reward:.3f}")

        base = client.models.list().data[0].id
        uploads = [client.files.create(file=path.open("rb"), purpose="fine-tune").id for path in (train, val)]
        method = {"type": "reinforcement", "reinforcement": {"grader": FIELDS, "hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "compute_multiplier": 1.0, "eval_interval": 5,
        }}}  # fmt: skip
        job = client.fine_tuning.jobs.create(
            model=base, training_file=uploads[0], validation_file=uploads[1], method=method,
            extra_body={"tunelab": {"max_completion_tokens": 48}},
        )  # fmt: skip
        job, seconds = wait_for_job(client, job, every_s=5)
        print(f"reinforcement job {job.id}: {job.status} in {seconds:.0f} s")
        print(
            "method:", job.method.type, job.method.reinforcement.hyperparameters.model_dump(exclude_none=True)
        )
        for event in client.fine_tuning.jobs.list_events(job.id, limit=100).data[::-1]:
            if event.type == "metrics" or event.level == "warn":
                print(" ", event.message)
    finally:
        server.terminate()
        server.wait(timeout=60)
    out = files / "graded.json"
    adapter = data_dir / "jobs" / job.id / "run"  # the operator's view of the job's model
    report = write(files / "report.json", REPORT)
    command = ["eval", "--grader", report, "--model", "default", "--adapter", adapter, "--data", test,
               "--max-new-tokens", 64, "--out", out]  # fmt: skip
    subprocess.run([sys.executable, "-m", "tunelab", *map(str, command)], check=True)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
