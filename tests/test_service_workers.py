"""Several workers on one store: each job is claimed once, a silent worker's job is taken over and
resumed, and (on PostgreSQL, as a team runs it) three `tunelab worker` processes train twelve jobs, each
exactly once, one of them killed mid-job and the job still ending with an uninterrupted run's weights."""

import os
import signal
import subprocess
import sys
import threading
import time

import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from conftest import copy_task_rows
from test_service_api import K1, jsonl, settings_for, upload
from tunelab.run_dir import RunDir
from tunelab.service import create_app
from tunelab.service.store import JobRow, Store, WorkerRow, new_id, now
from tunelab.service.worker import RESUMING


def queued_job(store: Store, devices: int = 1) -> str:
    job_id = new_id("ftjob-")
    store.add_job(
        JobRow(id=job_id, owner="org-a", model="tiny", model_root="tiny", training_file="file-x",
               validation_file=None, hyperparameters={}, options={}, base_spec="tiny", init_adapter=None,
               suffix=None, seed=0, metadata=None, status="queued", created_at=now(), devices=devices)
    )  # fmt: skip
    return job_id


def test_each_job_is_claimed_once_and_a_silent_workers_job_is_taken_over(tmp_path, database):
    store = Store(database or tmp_path / "tunelab.db")
    jobs = {queued_job(store) for _ in range(12)}
    claimed: list[tuple[str, str]] = []

    def work(worker: str) -> None:  # as `serve_jobs` does, without the training
        while (job := store.claim_job(worker, stale_before=now() - 60)) is not None:
            claimed.append((worker, job.id))
            store.set_status(job.id, "succeeded", only_from=("queued",))
            store.release(job.id, worker)

    threads = [threading.Thread(target=work, args=(f"w{i}@host",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(job for _, job in claimed) == sorted(jobs), "every job, each once"

    running = queued_job(store)
    assert store.claim_job("a@host", now() - 60).id == running
    store.set_status(running, "running", only_from=("queued",))
    assert store.claim_job("b@host", now() - 60) is None, "a's heartbeat is fresh"
    assert store.heartbeat(running, "a@host")
    assert store.claim_job("a@host", now() - 60).status == "running", "a, restarted, resumes its own"
    taken = store.claim_job("b@host", stale_before=now() + 1)  # a has been silent too long
    assert taken.id == running and taken.status == "running" and taken.worker == "b@host"
    assert not store.heartbeat(running, "a@host"), "a learns that the job is no longer its"
    store.release(running, "b@host")

    store.worker_seen("one@host", "cpu:1")
    store.worker_seen("two@host", "0,1")
    assert store.heartbeat(store.claim_job("two@host", now() - 60).id, "two@host")  # resumes `running`
    two = queued_job(store, devices=2)
    assert store.claim_job("one@host", now() - 60) is None, "a job on 2 devices waits for a worker with 2"
    assert store.workers() == [
        WorkerRow("one@host", "cpu:1", store.workers()[0].seen_at, None),
        WorkerRow("two@host", "0,1", store.workers()[1].seen_at, running),
    ]
    store.set_status(running, "succeeded", only_from=("running",))
    store.release(running, "two@host")
    assert store.claim_job("two@host", now() - 60, devices=2).id == two


def start_worker(data_dir, database: str, name: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "tunelab", "worker", "--data-dir", str(data_dir), "--name", name]
    command += ["--stale-after-s", "3"]
    env = {**os.environ, "TUNELAB_DATABASE": database}  # as a team would: the URL kept out of `ps`
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_three_worker_processes_share_twelve_jobs_and_survive_a_kill(
    tmp_path, tiny_llama_dir, postgres_server
):
    database = postgres_server.new_database()
    settings = settings_for(tmp_path, tiny_llama_dir, database=database, max_queued_jobs_per_key=12)
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service
        file_id = upload(client, jsonl(copy_task_rows(24))).json()["id"]
        short = {"tunelab": {"max_steps": 1, "max_length": 32}, "seed": 3}
        long = {"tunelab": {"max_steps": 6, "max_length": 32, "save_every": 2}, "seed": 5}
        bodies = [short] * 10 + [long, long]  # the last two the same: one is killed, one is not
        ids = []
        for body in bodies:
            reply = client.post("/v1/fine_tuning/jobs", headers=K1,
                                json={"model": "tiny", "training_file": file_id, **body})  # fmt: skip
            assert reply.status_code == 200, reply.text
            ids.append(reply.json()["id"])
        workers = {name: start_worker(tmp_path / "data", database, name) for name in ("w1", "w2", "w3")}
        try:
            killed = kill_mid_job(service.store, ids[-1], workers)
            deadline = time.monotonic() + 600
            while {service.store.job_status(i) for i in ids} != {"succeeded"}:
                assert time.monotonic() < deadline, {i: service.store.job_status(i) for i in ids}
                time.sleep(0.5)
        finally:
            for process in workers.values():
                process.kill()
                process.wait()
        assert killed.startswith("w")
        for job_id in ids:
            assert service.store.count_events(job_id, "Fine-tuning job started") == 1, job_id
        assert service.store.count_events(ids[-1], RESUMING) == 1
        assert service.store.count_events(ids[-2], RESUMING) == 0
        weights = [load_file(RunDir(service.data.run_dir(i)).adapter_weights) for i in ids[-2:]]
        assert weights[0].keys() == weights[1].keys()
        for name in weights[0]:
            assert torch.equal(weights[0][name], weights[1][name]), name


def kill_mid_job(store: Store, job_id: str, workers: dict) -> str:
    """kill -9 the worker on `job_id` once the job has a checkpoint; its name."""
    deadline = time.monotonic() + 300
    while not store.list_checkpoints(job_id) or store.get_job(job_id).worker is None:
        assert time.monotonic() < deadline, "the job never reached a checkpoint"
        time.sleep(0.1)
    name = store.get_job(job_id).worker.split("@")[0]
    os.kill(workers[name].pid, signal.SIGKILL)
    workers[name].wait()
    return name
