"""The real `tunelab serve` process: SIGKILL in the middle of a job loses nothing, and the resumed job
ends with exactly the model an uninterrupted one gives."""

import fcntl
import json
import time

from safetensors.torch import load_file

from conftest import copy_task_rows
from server import ServerProcess

STEPS = 120


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def finished(client, job_id):
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def all_events(client, job_id) -> list[dict]:
    return client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def worker_is_gone(data_dir) -> bool:
    with open(data_dir / "worker.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
        return True


def test_kill_9_mid_job_then_restart_resumes_to_the_same_model(tmp_path, tiny_llama_dir):
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, "key", {"tiny": str(tiny_llama_dir)})
    text = "".join(json.dumps(row) + "\n" for row in copy_task_rows(40))
    job_body = {"model": "tiny", "seed": 3, "tunelab": {"max_steps": STEPS, "save_every": 10}}
    try:
        server.start()
        with server.client() as client:
            file = client.post(
                "/v1/files", files={"file": ("t.jsonl", text)}, data={"purpose": "fine-tune"}
            ).json()
            job = client.post("/v1/fine_tuning/jobs", json={**job_body, "training_file": file["id"]}).json()
            wait_for(
                lambda: client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"],
                what="a first checkpoint",
            )
            before = all_events(client, job["id"])
            assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "running"
        server.kill()
        wait_for(lambda: worker_is_gone(data_dir), timeout=30, what="the worker to die with the server")

        server.start()
        with server.client() as client:
            # Generous deadlines: on a busy 2-core machine the low-priority worker trains slowly.
            resumed = wait_for(lambda: finished(client, job["id"]), timeout=900, what="the resumed job")
            assert resumed["status"] == "succeeded", resumed["error"]
            after = all_events(client, job["id"])
            assert {e["id"] for e in before} <= {e["id"] for e in after}  # every event kept
            assert any(e["message"] == "Resuming fine-tuning job" for e in after)
            steps = sorted(e["data"]["step"] for e in after if e["type"] == "metrics")
            assert steps == list(range(1, STEPS + 1))  # each step reported once, none lost
            assert client.get(f"/v1/files/{file['id']}/content").text == text

            # The same job, never interrupted, trains the same weights.
            again = client.post("/v1/fine_tuning/jobs", json={**job_body, "training_file": file["id"]}).json()
            clean = wait_for(lambda: finished(client, again["id"]), timeout=900, what="the uninterrupted job")
            assert clean["status"] == "succeeded"
            models = [m["id"] for m in client.get("/v1/models").json()["data"]]
            assert resumed["fine_tuned_model"] in models and clean["fine_tuned_model"] in models
    finally:
        server.stop()
    interrupted = load_file(data_dir / "jobs" / job["id"] / "run" / "adapter_model.safetensors")
    reference = load_file(data_dir / "jobs" / again["id"] / "run" / "adapter_model.safetensors")
    assert interrupted.keys() == reference.keys()
    for name, tensor in reference.items():
        assert (interrupted[name] == tensor).all(), name
