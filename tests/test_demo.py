"""The web demo: the page's handler on the shipped model (answers, overlay, maps; bad uploads and
budgets are messages on the page), and the page itself driven in headless Chromium: upload the example,
ask, read the answer, see the overlay; its screenshot is kept in test-artifacts/demo.png."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastv.cli import SHIPPED_MODEL

pytestmark = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here")
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs/examples/shapes.png"


@pytest.fixture(scope="module")
def demo():
    from fastv.demo import Demo

    return Demo()


def test_method_spec_from_the_pages_choices():
    from fastv.demo import method_spec
    from llava.errors import InputError

    assert method_spec("fastv", 36, 3) == "fastv:k=3,keep=36"
    assert method_spec("fastervlm", 58.0, 2) == "fastervlm:keep=58"
    assert method_spec("hired", 0.2, 2) == "hired:rate=0.2"
    assert method_spec("prumerge+", 10, 2) == "prumerge+"
    with pytest.raises(InputError, match="a whole number of tokens"):
        method_spec("fastervlm", 0.2, 2)


def test_the_handler_answers_pruned_and_unpruned_with_overlay_and_maps(demo):
    message, pruned, full, overlay, maps = demo.ask(str(EXAMPLE), "What color is the star?", "fastv", 20, 2)
    assert message == ""
    assert "(fastv:keep=20: 144 visual tokens, 20 kept after layer 2, time to first token" in pruned
    assert full.startswith("orange") and "unpruned: 144 visual tokens" in full
    assert overlay.size[0] == 336 and Path(maps).is_file()
    assert demo.pipe.method_spec == "none"  # the shared model is left unpruned


@pytest.mark.parametrize("content, message", [
    (b"not an image at all", "Error:** cannot read"),
    (None, "Error:** upload an image or pick the example first"),
])
def test_bad_uploads_get_a_message_on_the_page(demo, tmp_path, content, message):
    path = None
    if content is not None:
        path = tmp_path / "upload.png"
        path.write_bytes(content)
    result = demo.ask(str(path) if path else None, "What is it?", "fastervlm", 36, 2)
    assert message in result[0] and result[1:] == ("", "", None, None)


def test_a_too_large_upload_is_refused_before_it_is_read(demo, tmp_path, monkeypatch):
    from fastv import demo as module

    monkeypatch.setattr(module, "MAX_UPLOAD_MB", 0.001)
    assert "the limit is 0.001 MB" in demo.ask(str(EXAMPLE), "What is it?", "none", 36, 2)[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_in_headless_chromium():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    pytest.importorskip("gradio", reason="gradio (the demo extra) is not installed")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt-get)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "fastv.cli", "demo", "--port", str(port)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(argument)
    browser = None
    try:
        for _ in range(120):  # the model loads, then Gradio starts
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.5)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 90)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(EXAMPLE))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image img"))
        browser.find_element(By.CSS_SELECTOR, "#ask").click()
        answer = lambda: browser.find_element(By.CSS_SELECTOR, "#pruned-answer textarea").get_attribute("value")
        wait.until(lambda b: answer())
        assert answer().startswith("orange") and "fastervlm:keep=36: 36 visual tokens" in answer()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#overlay img"))
        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        browser.save_screenshot(str(artifacts / "demo.png"))
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)
