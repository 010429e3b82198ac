"""Many sites at once: the sites' steps in Dask worker processes give the federation the
sequential launcher gives (same protocol, same signatures, same model), a site that is down
or breaks is missing with the reason, and the coordinator flow picks the engine by size."""

from __future__ import annotations

import numpy as np

from fedchem.config import DeploymentConfig, ModelConfig, SimulationConfig, TrainConfig
from fedchem.federation.commits import read_round
from fedchem.federation.driver import InProcessSites
from fedchem.federation.parallel import DaskSites
from tests.conftest import PreparedSites

SMALL = {"model": ModelConfig(hidden=16), "train": TrainConfig(batch_size=128)}


def test_sites_in_dask_workers_train_the_model_the_sequential_launcher_trains(
    tox21_sites: PreparedSites,
) -> None:
    models = {}
    down = lambda rnd: ["site-b"] if rnd == 2 else []  # noqa: E731
    launchers = {
        "sequential": lambda config, hub: InProcessSites(config, hub, down=down),
        "dask": lambda config, hub: DaskSites(config, workers=2, hub=hub, down=down),
    }
    for engine, launcher in launchers.items():
        config = tox21_sites.config(
            f"engine-{engine}", rounds=2, deployment=DeploymentConfig(min_sites=3), **SMALL
        )
        outcome, hub = tox21_sites.federate(config, launcher)
        r1, r2 = outcome.rounds[1:]
        assert r1.sites == ["site-a", "site-b", "site-c", "site-d"]
        assert r2.sites == ["site-a", "site-c", "site-d"] and r2.missing == ["site-b"]
        assert tox21_sites.audit_problems(hub, config.run_id) == []  # every party signed
        models[engine] = read_round(hub, config.run_id, 2)[1]
    for name, value in models["sequential"].items():  # the same seeds, the same model
        np.testing.assert_allclose(models["dask"][name], value, rtol=1e-4, atol=1e-5)


def test_a_site_that_breaks_in_a_worker_is_missing_with_the_type_of_its_error(
    tox21_sites: PreparedSites, tmp_path
) -> None:
    config = tox21_sites.config(
        "engine-broken", rounds=1, deployment=DeploymentConfig(min_sites=3), **SMALL
    )
    broken = config.sites[2].model_copy(update={"workdir": tmp_path / "nothing-prepared"})
    config = config.model_copy(update={"sites": [*config.sites[:2], broken, config.sites[3]]})
    launchers: list[DaskSites] = []

    def launcher(config, hub):  # type: ignore[no-untyped-def]
        launchers.append(DaskSites(config, workers=2, hub=hub))
        return launchers[-1]

    outcome, _ = tox21_sites.federate(config, launcher)
    r1 = outcome.rounds[1]
    assert r1.sites == ["site-a", "site-b", "site-d"] and r1.missing == ["site-c"]
    assert launchers[0].ended_states["site-c"].name == "Failed"


def test_the_engine_is_chosen_by_the_number_of_sites() -> None:
    auto = SimulationConfig()
    assert not auto.uses_dask(8) and auto.uses_dask(9)
    assert SimulationConfig(engine="dask").uses_dask(2)
    assert not SimulationConfig(engine="subflows").uses_dask(100)


def test_a_securely_aggregated_round_runs_its_steps_in_the_workers(
    tox21_sites: PreparedSites,
) -> None:
    from fedchem.policy import SecAggPlan

    config = tox21_sites.config("engine-secure", rounds=1, secure_aggregation=SecAggPlan(), **SMALL)
    outcome, hub = tox21_sites.federate(
        config, lambda config, hub: DaskSites(config, workers=2, hub=hub)
    )
    r1 = outcome.rounds[1]
    assert r1.outcome == "aggregated" and r1.sites == ["site-a", "site-b", "site-c", "site-d"]
    assert tox21_sites.audit_problems(hub, config.run_id) == []


def _step_that_breaks(site: str) -> str:
    if site == "site-b":
        raise ValueError("row 7: CC(=O)Oc1ccccc1C(=O)O is not a valid value")  # site data
    return f"{site} done"


def test_a_site_step_in_a_worker_returns_its_result_or_only_the_type_of_its_error() -> None:
    from fedchem.federation.parallel import SiteStepFailed, at_sites

    calls = [(s, (s,)) for s in ("site-a", "site-b", "site-c")]
    out = at_sites("evaluate", _step_that_breaks, calls, workers=2)
    assert out[0] == "site-a done" and out[2] == "site-c done"
    failed = out[1]
    assert isinstance(failed, SiteStepFailed)
    assert (failed.site, failed.step, failed.kind) == ("site-b", "evaluate", "ValueError")
    assert "CC(=O)" not in str(failed) and "row 7" not in str(failed)
