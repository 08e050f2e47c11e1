"""The service's layers: every API route declares its response shape, route modules share code through
the use cases and shapes below them (never through another route module), and rows come back typed."""

import ast
import dataclasses
import importlib
import pkgutil
from pathlib import Path

from fastapi.routing import APIRoute

import tunelab.service.routes
from tunelab.service import ServiceSettings, create_app
from tunelab.service.store import JobRow, Store, now

# Routes whose answer is not one JSON object, so no response_model can describe it.
NOT_JSON = {
    ("GET", "/v1/files/{file_id}/content"): "the file itself (FileResponse)",
    ("GET", "/v1/models/{model_id}/export"): "a zip download (FileResponse)",
    ("GET", "/metrics"): "Prometheus text",
}
ROUTES = Path(tunelab.service.routes.__file__).parent


def api_routes(app) -> list[APIRoute]:
    """The JSON API's routes: the app's own and every route module's; the dashboard's are HTML pages (not
    in the schema)."""
    modules = [
        importlib.import_module(f"tunelab.service.routes.{m.name}") for m in pkgutil.iter_modules([ROUTES])
    ]
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    routes += [r for module in modules for r in module.router.routes]
    return [r for r in routes if r.include_in_schema]


def test_every_api_route_declares_a_response_model(tmp_path):
    app = create_app(ServiceSettings(data_dir=str(tmp_path), start_worker=False))
    missing = [
        (method, route.path)
        for route in api_routes(app)
        for method in route.methods
        if route.response_model is None and (method, route.path) not in NOT_JSON
    ]
    assert missing == []
    declared = {(m, r.path) for r in api_routes(app) for m in r.methods}
    assert set(NOT_JSON) <= declared, "an exception names a route that no longer exists"


def test_no_route_module_imports_another():
    for module in ROUTES.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                raise AssertionError(f"{module.name} imports routes/{node.module}: share it through usecases")


def test_rows_come_back_typed_with_their_json_decoded(tmp_path):
    store = Store(tmp_path / "db")
    job = JobRow(
        id="ftjob-1",
        owner="org",
        model="tiny",
        model_root="tiny",
        training_file="file-1",
        validation_file=None,
        hyperparameters={"n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": 2},
        options={"method": "lora", "lora_r": 8},
        base_spec="tiny-spec",
        init_adapter=None,
        suffix=None,
        seed=42,
        metadata={"team": "a"},
        status="queued",
        created_at=now(),
    )
    store.add_job(job)
    assert store.get_job("ftjob-1") == job
    store.add_event("ftjob-1", "step", type="metrics", data={"step": 1, "train_loss": 2.5}, step=1)
    store.add_checkpoint("ftjob-1", 1, "ft:tiny:org::1:ckpt-step-1", {"step": 1})
    (event,) = store.list_events("ftjob-1", None, 10)
    assert event.data == {"step": 1, "train_loss": 2.5} and event.step == 1
    (checkpoint,) = store.list_checkpoints("ftjob-1")
    assert checkpoint.metrics == {"step": 1} and dataclasses.is_dataclass(checkpoint)
