"""Headless Chromium signed in to the admin, for the content editors' browser tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client

webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver"
)
SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"


def screenshot(browser, name: str) -> None:
    """docs/screenshots/<name>.png, only when SKYLARK_SCREENSHOTS=1 asks for it: a test run
    leaves the documentation's images as they are."""
    if os.environ.get("SKYLARK_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def new_browser(width: int = 1280, height: int = 1000):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def sign_in(browser, live_server, user) -> None:
    client = Client()
    client.force_login(user)
    browser.get(live_server.url + "/admin/login/")
    browser.delete_all_cookies()
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    browser.add_cookie({"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "path": "/"})
    browser.get_log("browser")


def wait(browser, condition, timeout: float = 10):
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda _: condition())


def script_errors(browser) -> list[str]:
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and entry.get("source") != "network"
    ]
