"""Fine-tuning at a site that was not in the federation: its own tasks, its own registry, and
nothing of it on the hub or in the coordinator's registry."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from fedchem.config import SiteConfig
from fedchem.demo.sites import bundled_dataset
from fedchem.registry.store import Registry
from tests.serve.conftest import Published


def _new_partner(base: Path, published: Published) -> SiteConfig:
    """600 Tox21 molecules the federation never saw (rows 2000+), two of the federation's
    assays and one it never had (a renamed one, as a partner's own assay would be)."""
    base.mkdir(parents=True)
    frame = pd.read_csv(bundled_dataset()).iloc[2000:2600]
    own = {"SR-MMP": "SR-MMP", "SR-ARE": "SR-ARE", "NR-AhR": "ahr-own-assay"}
    rows = []
    for i, rec in enumerate(frame.to_dict("records")):
        for src, assay in own.items():
            v = rec[src]
            if v == v:  # measured (not NaN)
                rows.append(
                    {
                        "compound_id": f"N{i}",
                        "smiles": rec["smiles"],
                        "assay_id": assay,
                        "value": int(v),
                        "qualifier": "=",
                        "unit": "",
                    }
                )
    pd.DataFrame(rows).to_csv(base / "measurements.csv", index=False)
    pd.DataFrame(
        {
            "assay_id": list(own.values()),
            "assay_type": "binary",
            "threshold": "",
            "direction": "",
            "unit": "",
        }
    ).to_csv(base / "assays.csv", index=False)
    (base / "consortium.key").write_bytes(published.key)  # the consortium's key: it joins
    return SiteConfig(
        name="site-new",
        measurements=base / "measurements.csv",
        assays=base / "assays.csv",
        workdir=base / "work",
        key_file=base / "consortium.key",
        registry=str(base / "registry"),
        dask_workers=1,
    )


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_new_partner_fine_tunes_and_keeps_the_result_to_itself(
    prefect_api: None, published: Published, tmp_path: Path
):
    from fedchem.flows.finetune import finetune

    site = _new_partner(tmp_path / "site-new", published)
    hub_before = _digest(published.out / "hub")
    registry_before = _digest(published.out / "registry")
    reports = finetune(
        site=site, registry=str(published.out / "registry"), model="tox21-2000@production"
    )
    assert _digest(published.out / "hub") == hub_before  # nothing reached the hub
    assert _digest(published.out / "registry") == registry_before  # nor the registry
    mine = Registry(site.registry_url())
    assert mine.models() == ["tox21-2000-site-new"] and mine.aliases("tox21-2000-site-new") == {
        "production": 1
    }
    spec = mine.read_json("tox21-2000-site-new", 1, "spec.json")
    assert [t["name"] for t in spec["tasks"]] == ["SR-MMP", "SR-ARE", "ahr-own-assay"]
    assert spec["lineage"]["parent"] == "tox21-2000:1"
    fine, fed, local = reports["finetuned"], reports["federated"], reports["local"]
    assert fine is not None and local is not None and fed is not None
    assert fine.model == "finetuned" and fine.selected is not None and fine.selected >= 1
    assert fed.per_task.keys() <= {"SR-MMP", "SR-ARE"}  # the federated model as is: shared ones
    assert "ahr-own-assay" not in fed.per_task
    # a second fine-tune is a new version, the first one untouched
    again = finetune(
        site=site, registry=str(published.out / "registry"), model="tox21-2000@production"
    )
    assert again["finetuned"] is not None and mine.versions("tox21-2000-site-new") == [1, 2]
