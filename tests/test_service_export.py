"""`GET /v1/models/{model}/export`: the same exports as `tunelab export`, as a zip, for the key's models."""

import io
import json
import zipfile

from fastapi.testclient import TestClient

from tunelab.service import ServiceSettings, create_app

KEY = {"Authorization": "Bearer key-one"}


def test_export_route_gives_a_zip_of_the_export(tmp_path, tiny_llama_dir):
    settings = ServiceSettings(data_dir=str(tmp_path / "data"), api_keys=["key-one"],
                               base_models={"tiny": str(tiny_llama_dir)}, start_worker=False)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/models/tiny/export?format=hf").status_code == 401
        assert client.get("/v1/models/ft:nobody/export?format=hf", headers=KEY).status_code == 404
        bad = client.get("/v1/models/tiny/export?format=zip", headers=KEY)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"
        response = client.get("/v1/models/tiny/export?format=hf", headers=KEY)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(archive.namelist())
        assert json.loads(archive.read("export.json"))["format"] == "hf"
        again = client.get("/v1/models/tiny/export?format=hf", headers=KEY)  # kept, not made again
        assert again.content == response.content

        # signed in, the dashboard's overview sends to the Models page (exports in the background there)
        origin = {"Origin": "http://testserver"}  # the test client's own, as a browser sends it
        login = client.post("/login", data={"api_key": "key-one"}, headers=origin, follow_redirects=False)
        assert login.status_code == 303
        assert '<a href="/models">HF, GGUF, Ollama</a>' in client.get("/").text
        assert client.get("/v1/models/tiny/export?format=hf").content == response.content
