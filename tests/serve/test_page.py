"""The page for chemists in a real browser: headless Chromium (Debian's chromium and
chromium-driver, which ``.ci/run`` installs), driven as a chemist would: token, model, paste
SMILES, predict, read the table, open the card."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import Published
from tests.serve.test_service import NAME, Service, start_service, stop_service

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def page_service(
    published: Published, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    svc, proc = start_service(published, tmp_path_factory.mktemp("page"))
    try:
        yield svc
    finally:
        stop_service(proc)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("headless Chromium is needed: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=DriverService(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_chemist_pastes_smiles_and_reads_predictions_off_the_page(
    page_service: Service, browser: object
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    driver.get(page_service.url + "/")  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 60)
    driver.find_element(By.ID, "token").send_keys(page_service.tokens["alice"])  # type: ignore[attr-defined]
    driver.find_element(By.ID, "connect").click()  # type: ignore[attr-defined]
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) > 0)
    Select(driver.find_element(By.ID, "model")).select_by_value(NAME)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "smiles").send_keys("a1,CCO\na2,not-a-smiles\na3,c1ccccc1O")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "predict").click()  # type: ignore[attr-defined]
    table = wait.until(ec.presence_of_element_located((By.ID, "predictions")))
    rows = table.find_elements(By.TAG_NAME, "tr")
    header = [c.text for c in rows[0].find_elements(By.TAG_NAME, "th")]
    cells = [[c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows[1:]]
    got = [dict(zip(header, c, strict=True)) for c in cells]
    assert [r["id"] for r in got] == ["a1", "a2", "a3"]
    assert [r["status"] for r in got] == ["ok", "error", "ok"]
    assert got[1]["error"] == "unparsable SMILES"
    # what the page shows is what the API says, rounded as the page rounds
    api = httpx.post(
        f"{page_service.url}/models/{NAME}/predict",
        json={"smiles": ["CCO", "not-a-smiles", "c1ccccc1O"]},
        headers=page_service.headers("alice"),
        timeout=60,
    ).json()["rows"]
    task = next(h for h in header if h.endswith("_set")).removesuffix("_set")
    for shown, want in zip(got, api, strict=True):
        if want["status"] == "ok":
            assert float(shown[task]) == pytest.approx(want[task], abs=5e-4)
            words = {"1": "active", "0": "inactive", "0|1": "either", "": "neither"}
            assert shown[f"{task}_set"] == words[want[f"{task}_set"] or ""]
            assert shown["domain"] == want["domain"]
    assert "molecule(s) predicted, 1 with an error" in driver.find_element(By.ID, "status").text  # type: ignore[attr-defined]
    download = driver.find_element(By.ID, "download")  # type: ignore[attr-defined]
    assert download.is_enabled()
    legend = driver.find_element(By.ID, "legend").text  # type: ignore[attr-defined]
    assert "α = 0.1" in legend and "either: the model cannot tell" in legend
    # a failed request clears the last result and its download
    Select(driver.find_element(By.ID, "model")).select_by_value(NAME)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "alpha").clear()  # type: ignore[attr-defined]
    driver.find_element(By.ID, "alpha").send_keys("5")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "predict").click()  # type: ignore[attr-defined]
    wait.until(lambda d: "prediction failed" in d.find_element(By.ID, "status").text)
    assert not driver.find_elements(By.ID, "predictions")  # type: ignore[attr-defined]
    assert not download.is_enabled()
    driver.find_element(By.ID, "alpha").clear()  # type: ignore[attr-defined]
    driver.find_element(By.ID, "alpha").send_keys("0.1")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "show-card").click()  # type: ignore[attr-defined]
    card = wait.until(ec.visibility_of_element_located((By.ID, "card")))
    assert card.text.startswith(f"# {NAME} v1") and "Privacy" in card.text


def test_a_wrong_token_is_told_on_the_page(page_service: Service, browser: object):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(page_service.url + "/")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "token").send_keys("not-a-token")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "connect").click()  # type: ignore[attr-defined]
    WebDriverWait(driver, 30).until(lambda d: "401" in d.find_element(By.ID, "status").text)
