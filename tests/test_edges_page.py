"""The listening page in a real browser: Stop stays usable while the audio plays.

A long text arrives from the server long before it has been heard; Stop must still stop it.
Skips (before starting Ray) without chromium and chromium-driver (`make browser`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.shared_ray import serve_apps

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TEXT = " ".join(["The page keeps a way to stop the voice while it is still talking."] * 6)


def _browser() -> Any:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    driver, browser = shutil.which("chromedriver"), shutil.which("chromium")
    if driver is None or browser is None:
        pytest.skip("needs chromium and chromium-driver (Debian packages; `make browser` installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def page(fixture_dir: Path) -> Iterator[tuple[str, Any]]:
    browser = _browser()  # skips before Ray starts
    pytest.importorskip("ray")
    from serve_app.app import AppArgs, build_app

    try:
        with serve_apps((build_app(AppArgs(addons=[str(fixture_dir / "tiny-fast")])), "chorus", "/")) as url:
            yield url, browser
    finally:
        browser.quit()


def _state(browser: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.TAG_NAME, "body").get_attribute("data-state"))


def test_stop_stays_enabled_while_audio_plays_and_stops_it(page: tuple[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, browser = page
    browser.get(f"{url}/")
    wait = WebDriverWait(browser, 120)
    wait.until(lambda b: _state(b) == "idle")
    box = browser.find_element(By.ID, "text")
    box.clear()
    box.send_keys(TEXT)
    browser.find_element(By.ID, "play").click()
    wait.until(lambda b: _state(b) in ("done", "error"))
    assert _state(browser) == "done", browser.find_element(By.ID, "status").text
    # Everything has arrived; several seconds of it are still to be heard.
    left = browser.execute_script("return state.nextTime - state.ctx.currentTime")
    assert left > 2, left
    stop = browser.find_element(By.ID, "stop")
    assert stop.is_enabled()
    stop.click()
    assert browser.execute_script("return state.ctx") is None  # its AudioContext is closed: silence
    assert not stop.is_enabled()
    assert browser.find_element(By.ID, "status").text == "Stopped."
