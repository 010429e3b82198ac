"""A misbehaving site for the fault-injection suite (never deployed by the product).

Deployed under a real site's round deployment name, it runs the real site round, but when
``<stack>/faults.json`` says so for this run, site and round, what it publishes is damaged
as it is written (the coordinator reads a reply as soon as its manifest lands, so a fault
must be in place before that): ``corrupt`` stores altered bytes of the update under the
honest manifest (hash mismatch at the hub); ``garbage`` has the site's serializer emit random
bytes, which the site then records in its ledger, signs and sends like any update: the hash
matches, the signature holds, and it is not a model; ``stall`` stops as the update is about
to be written (trained, nothing sent), leaves ``<stack>/stalled/<run>.<site>.<round>`` so that
the suite knows, and waits there to be killed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from prefect import flow
from prefect.states import State

import fedchem.federation.site as site_lib
from fedchem.config import ChemConfig, ModelConfig, SiteConfig, SiteRef, TrainConfig
from fedchem.flows.site_round import site_round
from fedchem.messages import SiteUpdateManifest
from fedchem.storage.hub import HubLayout, HubStore

STALL_S = 600.0


def _stack_dir() -> Path | None:
    cfg = os.environ.get("FEDCHEM_SITE_CONFIG")
    return Path(cfg).parents[2] if cfg else None  # <stack>/sites/<site>/site.yaml


def stall_marker(stack_dir: Path, run_id: str, site: str, rnd: int) -> Path:
    return stack_dir / "stalled" / f"{run_id}.{site}.{rnd}"


def _plan(run_id: str, site: str, rnd: int) -> str | None:
    stack_dir = _stack_dir()
    if stack_dir is None or not (stack_dir / "faults.json").exists():
        return None
    plan = json.loads((stack_dir / "faults.json").read_text())
    return plan.get(run_id, {}).get(site, {}).get(str(rnd))


@flow(name="site-round", flow_run_name="round-{round:02d}/{site.name}")
def faulty_site_round(
    site: SiteConfig | SiteRef,
    hub_url: str,
    run_id: str,
    round: int,
    chem: ChemConfig,
    model: ModelConfig,
    train: TrainConfig,
    ticket: str,
    open_timeout_s: float = 1800.0,
) -> SiteUpdateManifest | State:
    fault = _plan(run_id, site.name, round)
    if fault is None:
        return site_round.fn(
            site, hub_url, run_id, round, chem, model, train, ticket, open_timeout_s
        )
    layout = HubLayout(run_id)
    update = layout.site_update(round, site.name)
    garbage = np.random.default_rng(round).bytes(4096)
    put_bytes, serialize = HubStore.put_bytes, site_lib.dump_arrays

    def damaged_bytes(self: HubStore, rel: str, data: bytes) -> None:
        if rel == update and fault == "stall":
            marker = stall_marker(_stack_dir() or Path("."), run_id, site.name, round)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(os.getpid()))
            time.sleep(STALL_S)
        if rel == update and fault == "corrupt":
            data = data[: len(data) // 2] + bytes(64) + data[len(data) // 2 + 64 :]
        put_bytes(self, rel, data)

    HubStore.put_bytes = damaged_bytes  # type: ignore[method-assign]
    if fault == "garbage":
        site_lib.dump_arrays = lambda arrays: garbage
    try:
        return site_round.fn(
            site, hub_url, run_id, round, chem, model, train, ticket, open_timeout_s
        )
    finally:
        HubStore.put_bytes, site_lib.dump_arrays = put_bytes, serialize  # type: ignore[method-assign]
