"""Check the Prefect UI as a user would: screenshot the latest coordinator run's page.

    PREFECT_API_URL=http://127.0.0.1:4200/api \
        python -m fedchem.deployments.screenshot [--out run.png]

Finds the newest flow run of the ``coordinator`` flow through Prefect's client, opens its page
(``<ui>/runs/flow-run/<id>``: the round-by-round artifacts, the progress bar and the summary)
in headless Chromium (Debian's ``chromium`` package) and saves a PNG. Not part of CI: it needs
a browser and a running server (``fedchem stack up`` gives one).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL, temporary_settings

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def latest_coordinator_run(api_url: str, flow_name: str = "coordinator") -> FlowRun:
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    if not runs:
        raise SystemExit(f"no '{flow_name}' flow run on {api_url}; run the coordinator first")
    return runs[0]


def run_page(api_url: str, run_id: str) -> str:
    """The UI page of a flow run: the API URL without ``/api`` (Prefect serves both)."""
    ui = api_url.rstrip("/").removesuffix("/api")
    return f"{ui}/runs/flow-run/{run_id}"


def browser_command(browser: str, url: str, out: Path, size: str = "1600,1400") -> list[str]:
    return [
        browser,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={size}",
        "--virtual-time-budget=15000",
        f"--screenshot={out}",
        url,
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api-url", default=os.environ.get("PREFECT_API_URL"))
    ap.add_argument("--out", default="coordinator-run.png")
    ap.add_argument("--browser", help=f"default: the first of {', '.join(BROWSERS)} on PATH")
    args = ap.parse_args()
    if not args.api_url:
        ap.error("set PREFECT_API_URL or pass --api-url")
    browser = args.browser or next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        ap.error("no Chromium found: apt-get install chromium (or pass --browser)")
    run = latest_coordinator_run(args.api_url)
    url = run_page(args.api_url, str(run.id))
    out = Path(args.out).resolve()
    subprocess.run(browser_command(browser, url, out), check=True, timeout=120)
    print(f"{run.name} ({run.state_name}): {url} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
