"""A job on several devices: the worker launches it under torchrun (on CPU, over gloo), DDP or FSDP2, and
the job ends as any other, its model published; `/metrics` and the overview show the worker's devices."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load_file

from conftest import copy_task_rows
from test_service_api import K1, create_job, jsonl, settings_for, wait_for_job
from tunelab.run_dir import RunDir
from tunelab.service import create_app
from tunelab.service.worker import serve_jobs, worker_id
from tunelab.training.checkpoint import SHARDS, list_checkpoints


def test_jobs_on_two_devices_train_under_torchrun_ddp_and_fsdp_alike(tmp_path, tiny_llama_dir):
    settings = settings_for(tmp_path, tiny_llama_dir, metrics_keys=["scrape"])
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service
        rows = jsonl(copy_task_rows(24))
        common = {"max_steps": 4, "save_every": 2, "max_length": 32, "dropout": 0, "precision": "fp32"}
        ddp = create_job(client, rows, seed=3, tunelab={"devices": 2, **common})
        fsdp = create_job(client, rows, seed=3, tunelab={"devices": 2, "fsdp": True, **common})
        assert ddp["status"] == fsdp["status"] == "queued"
        events = client.get(f"/v1/fine_tuning/jobs/{ddp['id']}/events", headers=K1).json()["data"]
        assert any("No worker has 2 devices" in event["message"] for event in events), "none ran yet"
        serve_jobs(service.data.root, once=True)  # the worker's loop, here; each job is a torchrun launch
        jobs = [wait_for_job(client, job["id"], timeout=5) for job in (ddp, fsdp)]
        assert [job["status"] for job in jobs] == ["succeeded", "succeeded"], jobs
        assert jobs[0]["tunelab"]["devices"] == 2
        checkpoints = client.get(f"/v1/fine_tuning/jobs/{fsdp['id']}/checkpoints", headers=K1).json()
        assert sorted(c["step_number"] for c in checkpoints["data"]) == [2, 4]  # published whole
        run_checkpoints = list_checkpoints(service.data.run_dir(fsdp["id"]))
        assert run_checkpoints and all((folder / SHARDS).is_dir() for folder in run_checkpoints)

        # The same two ranks, their model replicated (DDP) or sharded (FSDP2): the same weights.
        ddp_weights, fsdp_weights = (
            load_file(RunDir(service.data.run_dir(job["id"])).adapter_weights) for job in jobs
        )
        assert ddp_weights.keys() == fsdp_weights.keys()
        for name in ddp_weights:
            assert torch.allclose(ddp_weights[name], fsdp_weights[name], atol=1e-5), name

        metrics = client.get("/metrics", headers={"Authorization": "Bearer scrape"}).text
        overview = client.get("/", headers=K1).text
    devices = f"cpu:{os.cpu_count()}"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("tunelab_worker_devices", (("devices", devices), ("worker", worker_id("local"))))] == (
        os.cpu_count()
    )
    assert worker_id("local") in overview and devices in overview


def processes_of(job_id: str) -> list[str]:
    """The command lines of the processes (torchrun and its ranks) that name `job_id`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it ended meanwhile
            continue
        if job_id in text:
            found.append(text)
    return found


def wait_for_checkpoint(store, job_id: str, after: int = 0) -> None:
    deadline = time.monotonic() + 120
    while not [c for c in store.list_checkpoints(job_id) if c.step > after]:
        assert time.monotonic() < deadline, f"no checkpoint after step {after}"
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_workers_ranks_stop_with_it_and_a_cancel_stops_every_rank(tmp_path, tiny_llama_dir):
    """No rank trains on alone after its worker is gone (it would write into a run another resumes); the
    worker, restarted, resumes the job; and a cancel, which rank 0's hooks alone see, stops every rank at
    that step, none left waiting."""
    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir))) as client:
        service = client.app.state.service
        long = {"devices": 2, "max_steps": 1000, "save_every": 2, "max_length": 32}
        job_id = create_job(client, jsonl(copy_task_rows(24)), tunelab=long)["id"]
        command = [sys.executable, "-m", "tunelab", "worker", "--data-dir", str(service.data.root)]
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_checkpoint(service.store, job_id)
            assert len(processes_of(job_id)) == 3  # torchrun and two ranks
        finally:
            worker.kill()
            worker.wait()
        deadline = time.monotonic() + 30
        while processes_of(job_id):
            assert time.monotonic() < deadline, processes_of(job_id)
            time.sleep(0.2)
        assert service.store.job_status(job_id) == "running"  # for the next worker to resume

        step = max(c.step for c in service.store.list_checkpoints(job_id))
        resumer = threading.Thread(  # the same worker, restarted: it takes its own job back at once
            target=serve_jobs, args=(service.data.root,), kwargs={"once": True, "name": "worker"}
        )
        resumer.start()
        wait_for_checkpoint(service.store, job_id, after=step)
        reply = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=K1)
        assert reply.status_code == 200, reply.text
        resumer.join(timeout=60)
        assert not resumer.is_alive(), "a rank is still waiting"
        assert service.store.count_events(job_id, "Fine-tuning job cancelled") == 1
        assert service.store.job_status(job_id) == "cancelled" and not processes_of(job_id)
