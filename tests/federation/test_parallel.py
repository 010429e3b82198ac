"""Many sites at once: the sites' steps in Dask worker processes give the federation the
sequential launcher gives (same protocol, same signatures, same model), a site that is down
or breaks is missing with the reason, and the coordinator flow picks the engine by size."""

from __future__ import annotations

import numpy as np

from fedchem.config import DeploymentConfig, ModelConfig, SimulationConfig, TrainConfig
from fedchem.federation.commits import read_round
from fedchem.federation.coordinator import start_run
from fedchem.federation.driver import CoordinatorSteps, InProcessSites, run_rounds
from fedchem.federation.parallel import DaskSites
from fedchem.storage.hub import HubStore
from fedchem.trust.ledger import verify_run
from fedchem.trust.signing import COORDINATOR, KeyRing
from tests.conftest import PreparedSites

SMALL = {"model": ModelConfig(hidden=16), "train": TrainConfig(batch_size=128)}


def test_sites_in_dask_workers_train_the_model_the_sequential_launcher_trains(
    tox21_sites: PreparedSites,
) -> None:
    models = {}
    for engine in ("sequential", "dask"):
        config = tox21_sites.config(
            f"engine-{engine}", rounds=2, deployment=DeploymentConfig(min_sites=3), **SMALL
        )
        hub = HubStore(config.hub_url)
        steps = CoordinatorSteps(config, hub)
        first = start_run(hub, config, tox21_sites.label_stats, trust=steps.trust)
        down = lambda rnd: ["site-b"] if rnd == 2 else []  # noqa: E731
        launcher = (
            DaskSites(config, workers=2, hub=hub, down=down)
            if engine == "dask"
            else InProcessSites(config, hub, down=down)
        )
        outcome = run_rounds(config, steps, launcher, [first])
        r1, r2 = outcome.rounds[1:]
        assert r1.sites == ["site-a", "site-b", "site-c", "site-d"]
        assert r2.sites == ["site-a", "site-c", "site-d"] and r2.missing == ["site-b"]
        trust = tox21_sites.split.trust
        keys = KeyRing({COORDINATOR: trust.coordinator, **trust.sites})
        assert verify_run(hub, config.run_id, keys).problems == []  # every party signed
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
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    first = start_run(hub, config, tox21_sites.label_stats, trust=steps.trust)
    launcher = DaskSites(config, workers=2, hub=hub)
    outcome = run_rounds(config, steps, launcher, [first])
    r1 = outcome.rounds[1]
    assert r1.sites == ["site-a", "site-b", "site-d"] and r1.missing == ["site-c"]
    assert launcher.ended_states["site-c"].name == "Failed"


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
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    first = start_run(hub, config, tox21_sites.label_stats, trust=steps.trust)
    outcome = run_rounds(config, steps, DaskSites(config, workers=2, hub=hub), [first])
    r1 = outcome.rounds[1]
    assert r1.outcome == "aggregated" and r1.sites == ["site-a", "site-b", "site-c", "site-d"]
    trust = tox21_sites.split.trust
    keys = KeyRing({COORDINATOR: trust.coordinator, **trust.sites})
    assert verify_run(hub, config.run_id, keys).problems == []
