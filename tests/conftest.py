import json
import os
import sys
from pathlib import Path

import pytest

# Rich wraps output to the terminal's width (80 when piped, $COLUMNS when set), read once when a Console
# is made: pin it before tunelab is imported, so no test depends on the terminal it runs in.
os.environ["COLUMNS"] = "200"

sys.path.insert(0, str(Path(__file__).parent))
from tiny import make_model_dir, make_tokenizer  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model_dir(request, tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny-llama"), "llama")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def call(call_id: str, city: str, name: str = "get_weather") -> dict:
    """An OpenAI tool call of `name` (WEATHER's function by default) for `city`."""
    arguments = json.dumps({"city": city})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def copy_task_rows(n: int) -> list[dict]:
    """A learnable toy task: repeat the user's word."""
    words = ["alice", "bob", "paris", "london", "tokyo", "great", "bad", "film"]
    return [
        {
            "messages": [
                {"role": "user", "content": f"say {words[i % 8]}"},
                {"role": "assistant", "content": words[i % 8]},
            ]
        }
        for i in range(n)
    ]


def copy_task_pairs(n: int) -> list[dict]:
    """The copy task as TRL conversational preference pairs: the user's word preferred over another."""
    words = ["alice", "bob", "paris", "london", "tokyo", "great", "bad", "film"]
    return [
        {
            "prompt": [{"role": "user", "content": f"say {words[i % 8]}"}],
            "chosen": [{"role": "assistant", "content": words[i % 8]}],
            "rejected": [{"role": "assistant", "content": words[(i + 3) % 8]}],
        }
        for i in range(n)
    ]


def pytest_addoption(parser):
    parser.addoption(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="where every service a test starts keeps its state: postgresql gives each test a fresh "
        "database on a throwaway server (`make test-postgres`); the API tests run on both either way",
    )


@pytest.fixture(autouse=True)
def service_store(request, monkeypatch):
    """Under --store postgresql: $TUNELAB_DATABASE, which a service reads when not given --database, is a
    fresh PostgreSQL database for each test."""
    if request.config.getoption("--store") == "postgresql":
        import postgres

        if why_not := postgres.available():  # asked for by name: not a skip
            pytest.fail(f"--store postgresql: {why_not}")
        database = request.getfixturevalue("postgres_server").new_database()
        monkeypatch.setenv("TUNELAB_DATABASE", database)


@pytest.fixture(scope="session")
def postgres_server():
    import postgres

    why_not = postgres.available()
    if why_not:
        pytest.skip(why_not)
    server = postgres.PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request):
    """The service's store for a test: None (SQLite in the data dir) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_server").new_database()
