"""A misbehaving site for the fault-injection suite (never deployed by the product).

Deployed under a real site's round deployment name, it runs the real site round and then,
when ``<stack>/faults.json`` says so for this run, site and round, damages what it published:
``corrupt`` alters bytes of the update after its manifest (hash mismatch at the hub);
``garbage`` replaces the update with random bytes under a matching hash (not a model).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from prefect import flow
from prefect.states import State

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, SiteRef, TrainConfig
from fedchem.federation.manifest import FitInstructions, SiteUpdateManifest
from fedchem.storage.hub import HubLayout, HubStore
from flows.site_round import site_round


def _plan(run_id: str, site: str, rnd: int) -> str | None:
    cfg = os.environ.get("FEDCHEM_SITE_CONFIG")
    if not cfg:
        return None
    path = Path(cfg).parents[2] / "faults.json"  # <stack>/sites/<site>/site.yaml
    if not path.exists():
        return None
    plan = json.loads(path.read_text())
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
    fit: FitInstructions | None = None,
    ticket: str | None = None,
    open_timeout_s: float = 1800.0,
) -> SiteUpdateManifest | State:
    manifest = site_round.fn(
        site, hub_url, run_id, round, chem, model, train, fit, ticket, open_timeout_s
    )
    if not isinstance(manifest, SiteUpdateManifest):  # superseded: nothing was published
        return manifest
    fault = _plan(run_id, site.name, round)
    hub = HubStore(hub_url)
    if fault == "corrupt":
        data = bytearray(hub.get_bytes(manifest.update_path))
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
        hub.put_bytes(manifest.update_path, bytes(data))
    elif fault == "garbage":
        data = np.random.default_rng(round).bytes(4096)
        hub.put_bytes(manifest.update_path, data)
        manifest = manifest.model_copy(update={"update_sha256": hashlib.sha256(data).hexdigest()})
        path = HubLayout(run_id).site_manifest(round, site.name)
        hub.put_json(path, manifest.model_dump(mode="json"))
    return manifest
