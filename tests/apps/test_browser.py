"""One real-browser run: headless Chromium drives the review app served like `medassist review`.

Needs Debian's chromium + chromium-driver (skipped when /usr/bin/chromium is missing) and the
selenium package. Set MEDASSIST_SCREENSHOT=/some/path.png to keep a copy of the screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from medassist.review.server import build_command

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 180  # seconds; generous for a busy CI machine

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium chromium-driver)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served(triage_out, tmp_path):
    """The app as `launch` runs it (same command line), on a free loopback port."""
    port = free_port()
    log = (tmp_path / "streamlit.log").open("w")
    env = dict(os.environ, MEDASSIST_OUT=str(triage_out), MEDASSIST_USERS_FILE=str(tmp_path / "no-users.json"))
    env.pop("MEDASSIST_REVIEW_PASSWORD", None)
    env.pop("MEDASSIST_REVIEW_SESSION", None)  # single-user loopback mode: a typed name, marked unauthenticated
    proc = subprocess.Popen(build_command(triage_out, port=port, host="127.0.0.1"), stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not come up:\n{(tmp_path / 'streamlit.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1600,1300", f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def test_review_in_a_real_browser(served, browser, triage_out, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)

    def body_text() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    def until_text(text: str, present: bool = True) -> None:
        wait.until(lambda d: (text in body_text()) == present, f"waiting for {text!r} present={present}")

    def label(text: str):
        return wait.until(ec.element_to_be_clickable((By.XPATH, f"//label[contains(., {text!r})]")))

    browser.get(served)
    reviewer = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input[aria-label='Reviewer name']")))
    reviewer.send_keys("Dr Browser", Keys.ENTER)
    until_text("Enter your name to record decisions.", present=False)

    study = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input[aria-label='Open study']")))
    study.click()
    study.send_keys("ACC001")
    study.send_keys(Keys.ENTER)
    until_text("Study ACC001")
    until_text("Overlay layer")  # the saliency layer is on by default, labelled

    label("Saliency overlay").click()  # off ...
    until_text("Overlay layer", present=False)
    label("Saliency overlay").click()  # ... and on again
    until_text("Overlay layer")

    label("Accept - the finding is right").click()
    record = (By.XPATH, "//button[.//p[normalize-space()='Record decision']]")
    wait.until(lambda d: d.find_element(*record).is_enabled())
    browser.find_element(*record).click()
    until_text("Recorded: accept")
    until_text("Current decision: accept by Dr Browser")

    with sqlite3.connect(triage_out / "decisions.sqlite") as conn:
        rows = conn.execute("SELECT decision, reviewer, model, finding, model_flagged FROM decisions").fetchall()
    assert rows == [("accept", "Dr Browser (unauthenticated, loopback)", "fracture_xray", "fracture", 1)]

    time.sleep(1.0)  # let images finish painting
    shot = tmp_path / "review.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    from PIL import Image

    with Image.open(shot) as picture:
        assert picture.size[0] >= 1200
        pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10  # not a blank page
    keep = os.environ.get("MEDASSIST_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
