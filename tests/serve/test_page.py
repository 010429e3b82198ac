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


def _table(driver: object) -> tuple[list[str], dict[str, dict[str, object]]]:
    """The results table: its header, and each row's cells by column (keyed by id)."""
    from selenium.webdriver.common.by import By

    table = driver.find_element(By.ID, "predictions")  # type: ignore[attr-defined]
    header = [th.text for th in table.find_elements(By.TAG_NAME, "th")]
    rows = {}
    for tr in table.find_elements(By.CSS_SELECTOR, "tr[data-id]"):
        cells = {td.get_attribute("data-col"): td for td in tr.find_elements(By.TAG_NAME, "td")}
        rows[tr.get_attribute("data-id")] = cells
    return header, rows


def test_a_chemist_pastes_smiles_and_reads_predictions_off_the_page(
    page_service: Service, browser: object, tmp_path: Path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.serve.test_batch import SDF

    driver = browser
    driver.get(page_service.url + "/")  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 60)
    find = driver.find_element  # type: ignore[attr-defined]
    find(By.ID, "token").send_keys(page_service.tokens["alice"])
    find(By.ID, "connect").click()
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) > 0)
    Select(find(By.ID, "model")).select_by_value(NAME)
    # an id holding a comma makes its own line an error, never the whole batch
    pasted = "a1,CCO\na2,not-a-smiles\na3\tc1ccccc1O\nb,4,CCC"  # a tab key would move focus
    driver.execute_script("arguments[0].value = arguments[1]", find(By.ID, "smiles"), pasted)  # type: ignore[attr-defined]
    find(By.ID, "predict").click()
    wait.until(ec.presence_of_element_located((By.ID, "predictions")))
    header, rows = _table(driver)
    assert list(rows) == ["a1", "a2", "a3", "b"]
    assert [r["status"].text for r in rows.values()][:3] == ["ok", "error: unparsable SMILES", "ok"]
    assert rows["b"]["status"].text.startswith("error")
    described = httpx.get(
        f"{page_service.url}/models/{NAME}", headers=page_service.headers("alice"), timeout=60
    ).json()
    tasks = [t["name"] for t in described["tasks"]]
    assert header == ["structure", "id", "status", *tasks, "domain"]  # compact: one per task
    api = httpx.post(
        f"{page_service.url}/models/{NAME}/predict",
        json={"smiles": ["CCO", "not-a-smiles", "c1ccccc1O"], "ids": ["a1", "a2", "a3"]},
        headers=page_service.headers("alice"),
        timeout=60,
    ).json()["rows"]
    words = {"1": "active", "0": "inactive", "0|1": "either", "": "neither"}
    for want in api:
        if want["status"] != "ok":
            continue
        cells = rows[want["id"]]
        for task in tasks:
            if want[f"{task}_probability"] is None:  # a task not calibrated: the score, said
                assert cells[task].text == f"{want[task]:.2f} (score)"
                continue
            prob, word = cells[task].text.split(" ")
            assert float(prob) == pytest.approx(want[f"{task}_probability"], abs=5e-3)
            assert word == words[want[f"{task}_set"] or ""]
            assert word in cells[task].get_attribute("class")
        assert cells["domain"].text == want["domain"]
    # structures are drawn (RDKit's SVG, as images) for the rows that were predicted
    wait.until(lambda d: _table(d)[1]["a1"]["structure"].find_elements(By.TAG_NAME, "img"))
    img = _table(driver)[1]["a3"]["structure"].find_element(By.TAG_NAME, "img")
    assert img.get_attribute("src").startswith("data:image/svg+xml;base64,")
    assert img.get_attribute("alt") == "Oc1ccccc1"
    assert not _table(driver)[1]["a2"]["structure"].find_elements(By.TAG_NAME, "img")
    legend = find(By.ID, "legend").text
    assert "α = 0.1" in legend and "either: the model cannot tell" in legend
    assert "NR-AR: androgen receptor agonism" in find(By.ID, "task-descriptions").text
    # a task's header says what it measures; a click on a row shows every value
    assert "androgen" in driver.find_element(  # type: ignore[attr-defined]
        By.CSS_SELECTOR, 'th[data-col="NR-AR"]'
    ).get_attribute("title")
    rows["a1"]["id"].click()
    details = find(By.CSS_SELECTOR, "tr.details").text
    assert "standardized_smiles" in details and "CCO" in details
    # sorted by a task's probability, and filtered
    first = tasks[0]
    find(By.CSS_SELECTOR, f'th[data-col="{first}"]').click()
    by_prob = sorted(
        (r for r in api if r["status"] == "ok"),
        key=lambda r: (
            r[f"{first}"] if r[f"{first}_probability"] is None else r[f"{first}_probability"]
        ),
    )
    assert list(_table(driver)[1])[:2] == [r["id"] for r in by_prob]
    Select(find(By.ID, "rows-filter")).select_by_value("error")
    assert list(_table(driver)[1]) == ["a2", "b"]
    Select(find(By.ID, "rows-filter")).select_by_value("all")
    Select(find(By.ID, "view")).select_by_value("all")
    assert f"{tasks[0]}_set" in _table(driver)[0]
    Select(find(By.ID, "view")).select_by_value("compact")
    download = find(By.ID, "download")
    assert download.is_enabled()
    # an SD file: one row per record, its title kept, a depicted row
    sdf = tmp_path / "mols.sdf"
    sdf.write_text(SDF)
    find(By.ID, "file").send_keys(str(sdf))
    find(By.ID, "predict").click()
    wait.until(lambda d: list(_table(d)[1]) == ["1", "2", "3"])
    wait.until(lambda d: _table(d)[1]["2"]["structure"].find_elements(By.TAG_NAME, "img"))
    rows = _table(driver)[1]
    assert rows["2"]["status"].text == "ok" and rows["3"]["status"].text.startswith("error: SDF")
    Select(find(By.ID, "view")).select_by_value("all")
    header, rows = _table(driver)
    assert "title" in header and rows["2"]["title"].text == "phenol"
    Select(find(By.ID, "view")).select_by_value("compact")
    driver.execute_script("arguments[0].value = ''", find(By.ID, "file"))  # type: ignore[attr-defined]
    # a failed request clears the last result and its download
    find(By.ID, "alpha").clear()
    find(By.ID, "alpha").send_keys("5")
    find(By.ID, "predict").click()
    wait.until(lambda d: "prediction failed" in d.find_element(By.ID, "status").text)
    assert not driver.find_elements(By.ID, "predictions")  # type: ignore[attr-defined]
    assert not download.is_enabled()
    find(By.ID, "alpha").clear()
    find(By.ID, "alpha").send_keys("0.1")
    # the model card, rendered: headings and tables, not markdown
    find(By.ID, "show-card").click()
    card = wait.until(ec.visibility_of_element_located((By.ID, "card")))
    assert card.find_element(By.TAG_NAME, "h1").text == f"{NAME} v1"
    assert "Privacy" in card.text and "#" not in card.text.split("\n")[0]
    assert card.find_elements(By.TAG_NAME, "table")


def test_a_wrong_token_is_told_on_the_page(page_service: Service, browser: object):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(page_service.url + "/")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "token").send_keys("not-a-token")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "connect").click()  # type: ignore[attr-defined]
    WebDriverWait(driver, 30).until(lambda d: "401" in d.find_element(By.ID, "status").text)
