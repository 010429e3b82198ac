"""One turn of a federation that keeps learning: new data in, a candidate, a decision.

The cycle warm-starts from ``production`` (when there is one), has every site prepare its data
again (new or changed rows only are recomputed), runs the federation under the run id
``<run_id>-<cycle>``, publishes the result under ``candidate``, has every site score
production and candidate on the same molecules of its own validation fold (the paired
difference and its bootstrap interval), and the policy decides: promoted (better overall with
confidence, no site worse beyond its tolerance with confidence), refused, or not enough
evidence (production stays). The decision and every number behind it go to the registry's
history and to a Prefect artifact. A cycle run again
(resumed, retried) continues its run id and publishes nothing twice.

Deployed as ``continual/continual`` with a weekly schedule, inactive until an operator
switches it on in the UI; the cycle's name is then the run's scheduled date.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment

from fedchem.config import FederationConfig, PublishConfig, SiteConfig, WarmStart
from fedchem.federation import steps
from fedchem.federation.continual import PromotionPolicy, decide_promotion, decision_table
from fedchem.federation.parallel import dask_sites
from fedchem.flows.coordinator import coordinator
from fedchem.flows.publish import publish
from fedchem.flows.site_prepare import site_prepare
from fedchem.flows.site_validate import site_validate
from fedchem.messages import EvalReport
from fedchem.registry.store import Registry
from fedchem.tasks.coordinator import artifact_key
from fedchem.tasks.site import at_sites, prepare_sites


def _cycle_name(cycle: str | None) -> str:
    if cycle:
        return cycle
    scheduled = runtime.flow_run.scheduled_start_time
    return f"{scheduled:%Y%m%d}" if scheduled is not None else "manual"


def _published_for(reg: Registry, name: str, run_id: str) -> int | None:
    """The version this cycle's run already published, if any (a resumed cycle)."""
    for version in reversed(reg.versions(name)):
        if reg.read_json(name, version, "spec.json")["lineage"]["run_id"] == run_id:
            return version
    return None


def _decided(reg: Registry, name: str, version: int) -> dict[str, Any] | None:
    for event in reversed(reg.history(name)):
        if event.get("event") == "decision" and event.get("candidate") == version:
            return event
    return None


def _prepare(config: FederationConfig) -> None:
    """Every site prepares its current data (a subflow here, its own deployment deployed;
    many sites: one task run)."""
    many = dask_sites(config)
    if many is not None:
        prepare_sites(many, len(many), config.chem, config.tasks, config.hub_url)
        return
    for site in config.sites:
        if config.mode == "local" and isinstance(site, SiteConfig):
            site_prepare(site=site, chem=config.chem, tasks=config.tasks, hub_url=config.hub_url)
        else:
            run_deployment(
                f"site-prepare/{site.name}-prepare",
                timeout=3600,
                flow_run_name=f"prepare/{site.name}",
            )


def _validate(
    config: FederationConfig, registry: str, refs: list[str], compare: PromotionPolicy
) -> dict[str, dict[str, EvalReport]]:
    """site -> ref -> the site's validation report (the candidate's with its paired
    comparison against production); a site that fails is left out."""
    out: dict[str, dict[str, EvalReport]] = {}
    many = dask_sites(config)
    if many is not None:  # one task run, the sites' calls in Dask workers
        calls = [(s.name, (s, registry, refs, "valid", compare)) for s in many]
        results = at_sites(
            "validate",
            len(many),
            steps.validate_registered,
            calls,
            config.simulation.dask_address,
            config.simulation.workers,
        )
        return {s.name: r[0] for s, r in zip(many, results, strict=True) if isinstance(r, tuple)}
    for site in config.sites:
        if config.mode == "local" and isinstance(site, SiteConfig):
            state = site_validate(
                site=site, registry=registry, refs=refs, compare=compare, return_state=True
            )
            if state.is_completed():
                out[site.name] = state.result()
        else:
            run = run_deployment(
                f"site-validate/{site.name}-validate",
                parameters={
                    "site": {"name": site.name},
                    "registry": registry,
                    "refs": refs,
                    "compare": compare.model_dump(mode="json"),
                },
                timeout=1800,
                flow_run_name=f"validate/{site.name}",
            )
            if run.state is not None and run.state.is_completed():  # type: ignore[union-attr]
                out[site.name] = run.state.result()  # type: ignore[union-attr]
    return out


@flow(name="continual", flow_run_name="continual/{target.model_name}")
def continual(
    config: FederationConfig,
    target: PublishConfig,
    cycle: str | None = None,
    policy: PromotionPolicy = PromotionPolicy(),  # noqa: B008 (frozen pydantic model)
) -> dict[str, Any]:
    """Returns the decision: promoted or not, why, and the per-site numbers."""
    logger = get_run_logger()
    reg, name = Registry(target.registry), target.model_name
    run_id = f"{config.run_id}-{_cycle_name(cycle)}"
    production = reg.resolve(f"{name}@production")[1] if "production" in reg.aliases(name) else None
    warm = WarmStart(registry=target.registry, model=f"{name}:{production}") if production else None
    cfg = config.model_copy(update={"run_id": run_id, "init_from": warm})
    _prepare(cfg)
    coordinator(cfg)  # resumes this cycle's run after its last committed round
    candidate = _published_for(reg, name, run_id)
    if candidate is None:
        parent = f"{name}:{production}" if production else None
        candidate = publish(cfg, target.model_copy(update={"alias": "candidate", "parent": parent}))
    else:
        logger.warning(
            "cycle %s already published %s:%d; not publishing again", run_id, name, candidate
        )
    if (done := _decided(reg, name, candidate)) is not None:
        return dict(done["decision"])
    refs = [f"{name}:{candidate}"] + ([f"{name}:{production}"] if production else [])
    scores = _validate(cfg, target.registry, refs, policy)
    cand = {s: r[refs[0]].summary for s, r in scores.items()}
    prod = {s: r[refs[1]].summary for s, r in scores.items()} if production else None
    paired = {s: p for s, r in scores.items() if (p := r[refs[0]].paired) is not None}
    decision = decide_promotion(prod, cand, policy, paired)
    reg.record(
        name,
        {
            "event": "decision",
            "candidate": candidate,
            "production": production,
            "run_id": run_id,
            "decision": decision.as_dict(),
        },
    )
    if decision.promote:
        reg.set_alias(name, "production", candidate, note=f"promoted: {decision.reason}")
    lines = [
        f"# {name}: cycle `{run_id}`",
        "",
        f"Candidate `{name}:{candidate}` against production `{name}:{production}`: "
        f"**{decision.outcome}** ({decision.reason}).",
        "",
        *decision_table(decision),
    ]
    create_markdown_artifact(
        key=artifact_key(run_id, "decision"),
        markdown="\n".join(lines) + "\n",
        description=f"{name}: promotion decision of cycle {run_id}",
    )
    logger.info(
        "cycle %s: %s:%d %s (%s)",
        run_id,
        name,
        candidate,
        decision.outcome,
        decision.reason,
    )
    return {
        **decision.as_dict(),
        "candidate": candidate,
        "production": production,
        "run_id": run_id,
    }
