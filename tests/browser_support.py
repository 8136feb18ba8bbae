"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by selenium,
offline: the driver binary is given, so selenium fetches nothing. ``require_tool`` skips
on a developer machine without them and fails in CI, where .ci/apt-packages.txt has them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conftest import require_tool

WAIT = 60.0  # seconds the page gets for a step (a busy 2-core machine); no timing asserted


@contextlib.contextmanager
def chromium(downloads: Path) -> Iterator[Any]:
    """A headless Chromium session; closed (browser and driver) on the way out."""
    binary = require_tool("chromium", "apt-get install -y chromium chromium-driver")
    driver_path = require_tool("chromedriver", "apt-get install -y chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1000,1100",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--ignore-certificate-errors",  # a gateway's self-signed rehearsal certificate
        f"--user-data-dir={downloads / 'profile'}",
    ):
        options.add_argument(arg)
    service = Service(executable_path=driver_path, log_output=str(downloads / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition, what)


def tally(driver: Any) -> list[tuple[str, str, int, int]]:
    """The page's tally table: (cluster, pod, calls, errors) per row."""
    from selenium.webdriver.common.by import By

    rows = []
    for row in driver.find_elements(By.CSS_SELECTOR, "#tally-body tr"):
        cells = {
            c.get_attribute("class").split()[-1]: c.text
            for c in row.find_elements(By.TAG_NAME, "td")
        }
        rows.append((cells["cluster"], cells["pod"], int(cells["calls"]), int(cells["errors"])))
    return rows


def use_page(driver: Any, url: str, name: str, stream_count: int) -> None:
    """Open the page and call SayHello, then SayHelloStreamReply, through its buttons."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    box = driver.find_element(By.ID, "name")
    box.clear()
    box.send_keys(name)
    driver.find_element(By.ID, "say-hello").click()
    wait_for(driver, lambda d: text_of(d, "status") == "OK", "SayHello answered OK")
    wait_for(driver, lambda d: text_of(d, "reply") == f"Hello, {name}!", "the reply shown")
    count = driver.find_element(By.ID, "stream-count")
    count.clear()
    count.send_keys(str(stream_count))
    driver.find_element(By.ID, "say-stream").click()
    wait_for(
        driver,
        lambda d: (
            text_of(d, "reply").count("\n") == stream_count - 1 and text_of(d, "status") == "OK"
        ),
        "the stream's replies shown",
    )


def repeat(driver: Any, times: int) -> list[tuple[str, str, int, int]]:
    """Click "Repeat" for ``times`` SayHello calls; the tally once they are all done."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "repeat")
    box.clear()
    box.send_keys(str(times))
    driver.find_element(By.ID, "repeat-button").click()
    progress = driver.find_element(By.ID, "repeat-progress")
    wait_for(driver, lambda d: progress.get_attribute("data-done") == str(times), "repeats done")
    return tally(driver)


def screenshot(driver: Any, path: Path) -> Path:
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path
