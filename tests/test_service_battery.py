"""Issue 26's battery, findings 4, 5 and 7: a cut-short upload, unusable or empty training files, export
parameters, and list cursors that must not tell one key about another's ids."""

import pytest
from fastapi.testclient import TestClient

from conftest import copy_task_rows
from test_service_api import K1, K2, jsonl, settings_for, upload, wait_for_job
from tunelab.service import create_app

BOUNDARY = "tunelab-battery"
MISSING = {"file": "file-000000000000000000000000", "job": "ftjob-000000000000000000000000"}


@pytest.fixture
def client(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir))) as c:
        yield c


def assert_openai_error(response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# 4a: an upload is whole or refused


def multipart(text: str) -> str:
    """A whole body: 'purpose', then the file, then the closing boundary."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="train.jsonl"\r\n'
        f"Content-Type: application/jsonl\r\n\r\n{text}\r\n--{BOUNDARY}--\r\n"
    )


def post_body(client, body: str):
    headers = {**K1, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return client.post("/v1/files", headers=headers, content=body.encode())


@pytest.mark.parametrize(
    "cut",
    [
        "\r\n--tunelab-battery--\r\n",  # all of the file, no closing boundary
        "--\r\n",  # the boundary without its closing dashes
        "-\r\n",  # one dash of two
        '"}]}\n\r\n--tunelab-battery--\r\n',  # in the middle of the file's last line
    ],
)
def test_4a_a_body_cut_before_its_closing_boundary_is_refused_and_nothing_is_kept(client, tmp_path, cut):
    whole = multipart(jsonl(copy_task_rows(1)))
    assert whole.endswith(cut)
    error = assert_openai_error(post_body(client, whole.removesuffix(cut)), 400, "file", "invalid_multipart")
    assert "closing boundary" in error["message"]
    assert client.get("/v1/files", headers=K1).json()["data"] == []
    assert list((tmp_path / "data" / "files").iterdir()) == []  # no file, no partial one
    # The same body, whole, is stored.
    stored = post_body(client, whole)
    assert stored.status_code == 200, stored.text
    assert stored.json()["bytes"] == len(jsonl(copy_task_rows(1)))


# 4b, 4c: a file no job can use fails the job by line; no file at all is a 400


def job_on(client, text: str, param="training_file"):
    """A job whose `param` file is `text` (the other one, if any, is a good file); waits past validation."""
    files = {"training_file": upload(client, jsonl(copy_task_rows(12))).json()["id"]}
    files[param] = upload(client, text).json()["id"]
    response = client.post("/v1/fine_tuning/jobs", headers=K1, json={"model": "tiny", **files})
    assert response.status_code == 200, response.text
    return wait_for_job(client, response.json()["id"], statuses=("queued", "failed"))


def with_line_4(content: str) -> str:
    """Twelve good examples, the fourth one's answer replaced by `content` as written (JSON escapes kept)."""
    lines = jsonl(copy_task_rows(12)).splitlines()
    assert '"content": "london"' in lines[3]
    lines[3] = lines[3].replace('"content": "london"', f'"content": "{content}"')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
def test_4b_a_lone_surrogate_in_a_file_fails_the_job_naming_its_line(client, param):
    job = job_on(client, with_line_4("b\\ud800"), param)
    assert job["status"] == "failed"
    error = job["error"]
    assert error["code"] == f"invalid_{param}" and error["param"] == param, error
    assert "line 4" in error["message"] and "surrogate" in error["message"], error
    assert "messages.1.content" in error["message"], error
    # A surrogate pair is one character (U+1F600): the file is good.
    assert job_on(client, with_line_4("b\\ud83d\\ude00"), param)["status"] == "queued"


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
def test_4c_an_empty_file_id_is_a_400_naming_it(client, param):
    good = upload(client, jsonl(copy_task_rows(12))).json()["id"]
    body = {"model": "tiny", "training_file": good, param: ""}
    response = client.post("/v1/fine_tuning/jobs", headers=K1, json=body)
    assert_openai_error(response, 400, param)
    assert client.get("/v1/fine_tuning/jobs", headers=K1).json()["data"] == []


# 5: export parameters


@pytest.mark.parametrize("format", ["hf", "gguf", "gguf-lora", "ollama"])
@pytest.mark.parametrize(
    "quant", ["qqqq" * 2000, "q" * 300, "../../../x", "q8_0/../../../x", "f16\x00", "q8_0 "]
)
def test_5_a_quant_export_does_not_know_is_a_400_before_anything_is_made(client, tmp_path, format, quant):
    response = client.get("/v1/models/tiny/export", headers=K1, params={"format": format, "quant": quant})
    error = assert_openai_error(response, 400, "quant")
    assert "choose one of" in error["message"] and not error["message"].startswith("-")
    assert not (tmp_path / "data" / "exports").exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.zip").exists()


def test_5_every_export_parameter_is_checked(client, tmp_path):
    for format in ("zip", "f" * 10_000, "", "GGUF"):
        response = client.get("/v1/models/tiny/export", headers=K1, params={"format": format})
        assert_openai_error(response, 400, "format")
    long_id = "ft:" + "x" * 10_000
    assert_openai_error(client.get(f"/v1/models/{long_id}/export", headers=K1), 404, "model")
    assert not (tmp_path / "data" / "exports").exists()
    # A quant is the export's own name in any case; the archive is named by it.
    response = client.get("/v1/models/tiny/export", headers=K1, params={"format": "hf", "quant": "F16"})
    assert response.status_code == 200, response.text
    assert "tiny-hf-f16.zip" in response.headers["content-disposition"]
    assert (tmp_path / "data" / "exports" / "tiny" / "hf-f16.zip").is_file()


# 7: another key's id as a cursor acts exactly like one that does not exist


def same_as_missing(client, path: str, others: list[str], missing: str, **params) -> dict:
    """GET `path` with each of `others` as `after` answers exactly as with `missing`; returns that answer."""
    expected = client.get(path, headers=K1, params={**params, "after": missing})
    for other in others:
        got = client.get(path, headers=K1, params={**params, "after": other})
        assert (got.status_code, got.json()) == (expected.status_code, expected.json()), (path, other)
    return expected.json()


def new_job(client, headers) -> str:
    file_id = upload(client, jsonl(copy_task_rows(12)), headers=headers).json()["id"]
    response = client.post(
        "/v1/fine_tuning/jobs", headers=headers, json={"model": "tiny", "training_file": file_id}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_7_another_keys_file_or_job_as_a_cursor_is_as_unknown_as_a_missing_one(client):
    # Theirs between two of ours, so a cursor that found it would give a page in either order.
    first = upload(client, jsonl(copy_task_rows(12))).json()["id"]
    theirs = upload(client, jsonl(copy_task_rows(12)), headers=K2).json()["id"]
    last = upload(client, jsonl(copy_task_rows(12))).json()["id"]
    for order in ("desc", "asc"):
        page = same_as_missing(client, "/v1/files", [theirs], MISSING["file"], order=order)
        assert page["data"] == [] and page["has_more"] is False
    # Our own ids page as before.
    assert [f["id"] for f in client.get(f"/v1/files?after={last}", headers=K1).json()["data"]] == [first]
    asc = client.get(f"/v1/files?after={first}&order=asc", headers=K1).json()["data"]
    assert [f["id"] for f in asc] == [last]

    our_first = new_job(client, K1)
    their_job = new_job(client, K2)
    our_last = new_job(client, K1)
    page = same_as_missing(client, "/v1/fine_tuning/jobs", [their_job], MISSING["job"])
    assert page["data"] == [] and page["has_more"] is False
    jobs = client.get(f"/v1/fine_tuning/jobs?after={our_last}", headers=K1).json()["data"]
    assert [j["id"] for j in jobs] == [our_first]


def test_7_an_event_or_checkpoint_cursor_is_looked_up_in_its_own_job_only(client):
    job_id = new_job(client, K1)
    other_job = new_job(client, K1)  # of the same key: still another job's events
    their_job = new_job(client, K2)
    ours = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=K1).json()["data"]
    assert len(ours) >= 2
    others = [
        client.get(f"/v1/fine_tuning/jobs/{job}/events", headers=key).json()["data"][-1]["id"]
        for job, key in ((other_job, K1), (their_job, K2))
    ]
    path = f"/v1/fine_tuning/jobs/{job_id}/events"
    page = same_as_missing(client, path, others, "ftevent-000000000000000000000000")
    assert page["data"] == [] and page["has_more"] is False
    after_newest = client.get(path, headers=K1, params={"after": ours[0]["id"]}).json()["data"]
    assert after_newest == ours[1:]

    store = client.app.state.service.store
    for job in (job_id, other_job, their_job):
        for step in (10, 20):
            store.add_checkpoint(job, step, f"ft:tiny:x::{job}:ckpt-step-{step}", {"step": step})
    ours = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=K1).json()["data"]
    others = [store.list_checkpoints(job)[-1].id for job in (other_job, their_job)]
    path = f"/v1/fine_tuning/jobs/{job_id}/checkpoints"
    page = same_as_missing(client, path, others, "ftckpt-000000000000000000000000")
    assert page["data"] == [] and page["has_more"] is False
    after_newest = client.get(path, headers=K1, params={"after": ours[0]["id"]}).json()["data"]
    assert after_newest == ours[1:]
