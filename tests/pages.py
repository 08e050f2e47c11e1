"""Shared by the dashboard's tests: small training files, polling, and a real Chromium (Debian's, driven by
Playwright) that skips the test cleanly where either is missing."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tunelab.service.settings import ServiceSettings


def settings(tmp_path, model_dir, start_worker: bool = False) -> ServiceSettings:
    """The service for a dashboard test: keys k1 and k2, the model as base "tiny", its data under tmp_path."""
    return ServiceSettings(
        data_dir=str(tmp_path / "data"),
        api_keys=["k1", "k2"],
        base_models={"tiny": str(model_dir)},
        start_worker=start_worker,
    )


def rows(n: int, start: int = 0) -> list[dict]:
    """n chat examples, each unlike the others (no duplicates to report)."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"repeat the word w{i}"},
                {"role": "assistant", "content": f"w{i}"},
            ]
        }
        for i in range(start, start + n)
    ]


def jsonl(records: list) -> bytes:
    """Records as JSON lines; a str is written as it is (a broken line, say)."""
    return "".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in records).encode()


def until(condition, timeout: float = 120.0, every_s: float = 0.05):
    """Polls `condition` until it returns something true, which it returns."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every_s)
    return result


def browser_or_skip():
    """(chromium's path, playwright.sync_api), or the test skips."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH")
    return chromium, pytest.importorskip("playwright.sync_api")


def launch(p, chromium: str):
    return p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])


def watched(page) -> list[str]:
    """Script errors, CSP refusals and dialogs (alert) of the page, as they happen."""
    problems = []
    page.on("pageerror", lambda error: problems.append(f"error: {error}"))
    page.on("console", lambda m: "Content Security Policy" in m.text and problems.append(m.text))

    def dialog(d):
        problems.append(f"dialog: {d.message}")
        d.dismiss()

    page.on("dialog", dialog)
    return problems


def sign_in(page, url: str, key: str = "k1") -> None:
    page.goto(url + "/")
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    page.locator("header >> text=Log out").wait_for()
