"""The playground page in real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.prerequisites import require_chromium
from tests.support import ROOT, poll, serve, serve_fixture, wait_ready

ARTIFACTS = ROOT / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_chromium()  # "not run, because ..." where Debian's chromium is missing
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("playground")
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--data-root", str(folder / "data"),
                    "--samples", str(folder / "png")], check=True)
    subprocess.run([sys.executable, str(ROOT / "examples/iris/train.py"), "--data-root", str(folder / "data")],
                   check=True)
    return folder


def test_playground_predicts_the_digit_from_an_uploaded_png(browser: Browser, trained: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(ROOT / "examples/digits/mlcomponent.yaml", data_root=trained / "data") as server:
        wait_ready(server)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator("#in-image").get_attribute("accept") == "image/png"
        page.set_input_files("#in-image", str(trained / "png" / "digit-7.png"))
        page.click("#run")
        label = page.locator("[data-output=label]")
        label.wait_for()
        assert label.text_content() == "7"  # one value is shown as the value, not as a 1×1 table
        assert page.locator("[data-output=label] td").count() == 0
        assert page.locator("[data-output=probabilities] td").count() == 10
        assert "200 ·" in (page.locator("#latency").text_content() or "")
        assert page.locator("[data-name=preview]").count() == 0  # optional: only when asked for
        page.check("#want-preview")
        page.click("#run")
        preview = page.locator("[data-name=preview] img")
        preview.wait_for()
        page.wait_for_function("document.querySelector('[data-name=preview] img').naturalWidth > 0")
        assert preview.evaluate("img => img.naturalWidth") == 128
        assert page.locator("[data-name=preview] a").get_attribute("download") == "preview.png"
        page.screenshot(path=str(ARTIFACTS / "playground-digits.png"), full_page=True)
        page.close()


def test_playground_shows_the_service_error_for_a_bad_value(browser: Browser, trained: Path) -> None:
    with serve(ROOT / "examples/iris/mlcomponent.yaml", data_root=trained / "data") as server:
        wait_ready(server)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator("#in-features").input_value() == "[[5.1,3.5,1.4,0.2]]"  # from the docstring Example
        assert page.locator("#param-min_confidence").input_value() == "0"
        assert "FP32, shape [-1, 4]" in (page.locator("#in-features >> xpath=..").text_content() or "")
        assert "Fill in the inputs and press Run." in (page.locator("#outputs").text_content() or "")
        page.click("#run")
        page.locator("[data-name=label] .value").wait_for()
        assert page.locator("[data-name=label] .value").text_content() == "setosa"
        assert page.locator("[data-output=class_index]").text_content() == "0"  # INT32 per row, one row
        page.fill("#in-features", "500, 3.5, 1.4, 0.2")
        page.click("#run")
        error = page.locator("#error")
        error.wait_for(state="visible")
        assert "Error 400" in (error.text_content() or "")
        assert "input 'features': element 0 = 500" in (error.text_content() or "")
        assert "outside the declared range [0, 100]" in (error.text_content() or "")
        assert (page.locator("#outputs").text_content() or "") == ""  # no "press Run" under the error
        page.screenshot(path=str(ARTIFACTS / "playground-error.png"), full_page=True)
        page.close()


def test_playground_renders_backticks_as_code(browser: Browser, trained: Path) -> None:
    with serve(ROOT / "examples/iris/table.yaml", data_root=trained / "data") as server:
        wait_ready(server)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator("#summary code").first.text_content() == "species"
        assert "`" not in (page.locator("#summary").text_content() or "")
        page.close()


def test_playground_says_why_the_model_is_not_ready(browser: Browser, tmp_path: Path) -> None:
    with serve_fixture(tmp_path, "failing_warmup.inference") as server, server.client() as client:
        poll(lambda: "reason" in client.get("/v2/health/ready").json(), "the warm-up to fail")
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        error = page.locator("#error")
        assert error.is_visible()
        assert (error.text_content() or "").startswith(
            "Not ready: warm-up with the docstring's Example failed: FileNotFoundError: no model at ")
        assert "(failing_warmup.py, line 14)" in (error.text_content() or "")
        page.close()


def test_playground_asks_for_the_token_when_the_service_needs_one(browser: Browser, trained: Path) -> None:
    with serve(ROOT / "examples/iris/mlcomponent.yaml", "--auth-token-env", "PLAYGROUND_TOKEN",
               data_root=trained / "data", env={"PLAYGROUND_TOKEN": "open-sesame"}) as server:
        wait_ready(server)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#token")
        page.fill("#token", "open-sesame")
        page.click("text=Use token")
        page.wait_for_selector("body[data-ready=true]")
        page.click("#run")
        page.locator("[data-name=label] .value").wait_for()
        assert page.locator("[data-name=label] .value").text_content() == "setosa"
        page.close()
