"""The web demo: the page's handler on the shipped model (answers, overlay, maps; bad uploads and
budgets are messages on the page); the page's own HTTP API on a launched server, sent what a browser or a
script can send (an empty or a text file as the image, an oversized image, an empty budget), answering each
with a message and then a good request on the same server; and the page itself driven in headless
Chromium: upload the example, ask, read the answer, see the overlay; its screenshot is kept in
test-artifacts/demo.png. In CI (CI=true) a missing Gradio, Selenium or Chromium fails these tests instead
of skipping them."""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastv.shipped import SHIPPED_MODEL

pytestmark = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here")
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs/examples/shapes.png"
UPLOAD_LIMIT_MB = 0.25  # the launched server's --max-upload-mb: above the example (0.15 MB), below a noise image


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
    assert method_spec("none", None, 2) == "none"  # a budget it does not use may be left empty
    with pytest.raises(InputError, match="a whole number of tokens"):
        method_spec("fastervlm", 0.2, 2)
    with pytest.raises(InputError, match="type a budget"):
        method_spec("fastervlm", None, 2)
    with pytest.raises(InputError, match="unknown method 'fastvv'; the page offers fastv, fastervlm"):
        method_spec("fastvv", 36, 2)


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
    monkeypatch.setattr(demo, "max_upload_mb", 0.001)
    assert "the limit is 0.001 MB" in demo.ask(str(EXAMPLE), "What is it?", "none", 36, 2)[0]


def _need(available: bool, reason: str) -> None:
    """Skip where a tool the test drives is missing; fail in CI, where .ci/run installs it."""
    if not available:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{reason} (CI=true: this test must run)")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`fastv demo` launched as a user launches it, on a free port of 127.0.0.1 -> (url, its log file)."""
    _need(importlib.util.find_spec("gradio") is not None, "gradio (the demo extra) is not installed")
    port, log = _free_port(), tmp_path_factory.mktemp("demo") / "server.log"
    command = [sys.executable, "-m", "fastv.cli", "demo", "--port", str(port), "--max-upload-mb", str(UPLOAD_LIMIT_MB)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        for _ in range(240):  # the model loads, then Gradio starts
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/", log
        assert process.poll() is None, log.read_text()  # still serving after every test's requests
    finally:
        process.terminate()
        process.wait(timeout=30)


def _noise_png(path: Path) -> Path:
    """A real image larger than UPLOAD_LIMIT_MB: 400 x 400 RGB noise does not compress (about 0.46 MB)."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(path)
    return path


def test_bad_requests_to_the_pages_api_get_a_message_and_the_server_keeps_serving(server, tmp_path):
    from gradio_client import Client, handle_file

    url, log = server
    empty, text = tmp_path / "empty.png", tmp_path / "notes.png"
    empty.write_bytes(b"")
    text.write_text("a text file renamed .png\n")
    large = _noise_png(tmp_path / "large.png")
    client = Client(url, verbose=False)
    ask = lambda image, budget=36, method="fastervlm", layer=2: client.predict(
        image, "What color is the star?", method, budget, layer, api_name="/ask")
    cases = [
        (ask(handle_file(empty)), "**Error:** cannot read image", "not an image or corrupt"),
        (ask(handle_file(text)), "**Error:** cannot read image", "not an image or corrupt"),
        (ask(handle_file(large)), f"**Error:** the image is {large.stat().st_size / 2**20:.1f} MB",
         f"the limit is {UPLOAD_LIMIT_MB:g} MB"),
        (ask(handle_file(EXAMPLE), budget=None), "**Error:** type a budget", ""),
        (ask(handle_file(EXAMPLE), budget="many"), "**Error:** the budget must be a number, got 'many'", ""),
        (ask(handle_file(EXAMPLE), method="fastvv"), "**Error:** unknown method 'fastvv'; the page offers", ""),
        (ask(handle_file(EXAMPLE), layer=99), "**Error:** the FastV layer K must be a whole number in 1..", "got 99"),
        (ask(None), "**Error:** upload an image or pick the example first", ""),
    ]
    for (message, *outputs), start, part in cases:
        assert message.startswith(start) and part in message and "\n" not in message, message
        assert outputs == ["", "", None, None]
    message, pruned, full, overlay, maps = ask(handle_file(EXAMPLE))  # the same server answers a good request
    assert message == "" and pruned.startswith("orange") and "fastervlm:keep=36: 36 visual tokens" in pruned
    assert full.startswith("orange") and Path(overlay).is_file() and Path(maps).is_file()
    assert "Traceback" not in log.read_text(), log.read_text()


def test_the_page_in_headless_chromium(server, tmp_path):
    _need(importlib.util.find_spec("selenium") is not None, "selenium is not installed")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    _need(bool(chromium and driver_path),
          "Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt-get)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(server[0])
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
        notes = tmp_path / "notes.png"  # a text file renamed .png: the page says so in its message
        notes.write_text("a text file renamed .png\n")
        browser.get(server[0])
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(notes))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image img"))  # uploaded (shown as a broken image)
        browser.find_element(By.CSS_SELECTOR, "#ask").click()
        wait.until(lambda b: "cannot read image" in b.find_element(By.CSS_SELECTOR, "#message").text)
        assert "not an image or corrupt" in browser.find_element(By.CSS_SELECTOR, "#message").text
    finally:
        browser.quit()


# Video-LLaVA: the page's video input (a tiny random Video-LLaVA saved by transformers)


@pytest.fixture(scope="module")
def video_demo(tiny_video_dir):
    from fastv.demo import Demo

    return Demo(str(tiny_video_dir))


def _gif(path: Path, frames: int) -> Path:
    from tests.helpers import write_random_gif

    return write_random_gif(path, frames, seed=frames)


def test_the_video_handler_answers_with_the_strip_of_frames(video_demo, tmp_path):
    from fastv.overlay import GAP, TITLE_HEIGHT

    clip = _gif(tmp_path / "clip.gif", 12)
    message, pruned, full, strip = video_demo.ask_video(str(clip), "what happens ?", "fastervlm", 16, 2)
    assert message == ""
    assert "(fastervlm:keep=16: 136 visual tokens, time to first token" in pruned  # 8 x ([CLS] + 16 patches)
    assert pruned.endswith("patches per frame: 16, 16, 16, 16, 16, 16, 16, 16)")
    assert "(unpruned: 520 visual tokens" in full and full.endswith("patches per frame: 64, 64, 64, 64, 64, 64, 64, 64)")
    assert strip.size == (8 * (112 + GAP) - GAP, 112 + 2 * TITLE_HEIGHT)
    message, pruned, *_ = video_demo.ask_video({"path": str(clip)}, "what happens ?", "fastv", 100, 2)
    assert message == "" and "(fastv:keep=100: 520 visual tokens, 100 kept after layer 2" in pruned  # over the video
    assert video_demo.pipe.method_spec == "none"  # the shared model is left unpruned


def test_bad_video_uploads_and_choices_get_a_message(video_demo, demo, tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("a text file renamed .mp4\n")
    short, clip = _gif(tmp_path / "short.gif", 5), _gif(tmp_path / "clip.gif", 9)
    cases = [
        (video_demo.ask_video(None, "what ?", "fastervlm", 16, 2), "**Error:** upload a video first"),
        (video_demo.ask_video(str(notes), "what ?", "fastervlm", 16, 2), "not a video or corrupt"),
        (video_demo.ask_video(str(short), "what ?", "fastervlm", 16, 2), "it has 5 frames, fewer than 8"),
        (video_demo.ask_video(str(clip), "what ?", "hired", 0.2, 2),
         "**Error:** unknown method 'hired'; the page offers fastv, fastervlm, random, uniform, none"),
        (video_demo.ask_video(str(clip), " ", "fastervlm", 16, 2), "**Error:** type a question"),
        (demo.ask_video(str(clip), "what ?", "fastervlm", 16, 2), "is an image model: start the demo with a Video-LLaVA"),
    ]
    for (message, *outputs), part in cases:
        assert part in message and "\n" not in message, message
        assert outputs == ["", "", None]


def test_the_video_input_in_headless_chromium(tiny_video_dir, tmp_path):
    """`fastv demo` on a Video-LLaVA checkpoint: upload a GIF in the page's video section, ask, read the answer, see
    the strip of frames (screenshot in test-artifacts/demo-video.png)."""
    _need(importlib.util.find_spec("gradio") is not None, "gradio (the demo extra) is not installed")
    _need(importlib.util.find_spec("selenium") is not None, "selenium is not installed")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    _need(bool(chromium and driver_path),
          "Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt-get)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = _gif(tmp_path / "clip.gif", 12)
    port, log = _free_port(), tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "fastv.cli", "demo", "--model-path", str(tiny_video_dir),
                                    "--port", str(port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(argument)
    browser = None
    try:
        deadline = time.monotonic() + 600  # the model loads, then Gradio starts (slow on a busy 2-core machine)
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the demo did not start: " + log.read_text()
                time.sleep(0.5)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#video input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#video input[type=file]").send_keys(str(clip))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#video [aria-label='clip.gif']"))  # listed: uploaded
        browser.find_element(By.CSS_SELECTOR, "#ask-video").click()
        answer = lambda: browser.find_element(By.CSS_SELECTOR, "#video-pruned-answer textarea").get_attribute("value")
        wait.until(lambda b: answer())
        assert "fastervlm:keep=64: 520 visual tokens" in answer() and "patches per frame: 64, 64" in answer()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#video-frames img"))
        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        browser.save_screenshot(str(artifacts / "demo-video.png"))
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        if browser is not None:
            browser.quit()
        process.terminate()
        process.wait(timeout=30)
