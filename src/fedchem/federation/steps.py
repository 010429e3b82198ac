"""A site's steps beside the rounds, as library calls: prepare, report, evaluate, baselines,
cross-evaluation, calibration.

The Prefect tasks of :mod:`fedchem.tasks.site` call these (one step, one site, logged to the
site's flow run); a simulation of many sites submits them to Dask workers instead
(:func:`fedchem.federation.parallel.at_sites`: no subflow per site step). Either way the step
runs under the site's own config and policy (:func:`~fedchem.trust.sovereign.own_site`: the
hub, registry and paths a caller names are checked against it), signs what it publishes and
records it in the site's ledger. What a step returns is aggregates only (counts, metrics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from fedchem.config import (
    ChemConfig,
    ModelConfig,
    Selection,
    SiteConfig,
    SiteRef,
    TaskSpec,
    TrainConfig,
)
from fedchem.federation import baselines
from fedchem.federation import site as site_lib
from fedchem.messages import EvalReport, SiteCalibration
from fedchem.storage.hub import HubLayout, HubStore, json_bytes
from fedchem.trust.ledger import SITE_SCOPE, Ledger
from fedchem.trust.site import SiteGuard, site_signer
from fedchem.trust.sovereign import check_featurizer, own_site

if TYPE_CHECKING:
    from fedchem.chem.parallel import Progress
    from fedchem.federation.continual import PromotionPolicy
    from fedchem.messages import PrepareReport
    from fedchem.model.paired import PairedDifference

__all__ = [
    "calibrate_for_serving",
    "evaluate_baselines",
    "evaluate_global",
    "prepare",
    "publish_prepare_report",
    "site_ledger",
    "train_local_baseline",
    "validate_registered",
]


def site_ledger(site: SiteConfig, hub: HubStore, scope: str) -> Ledger | None:
    """The site's ledger in ``scope`` (a copy kept under its workdir); None without a key."""
    signer = site_signer(site)
    return None if signer is None else Ledger(hub, scope, signer, site.workdir / "ledger")


def _record_reports(
    site: SiteConfig, hub: HubStore, run_id: str, reports: list[EvalReport]
) -> None:
    """Evaluation reports leave the site as results, not hub objects: their hashes go into
    the site's ledger all the same (what left, and when)."""
    ledger = site_ledger(site, hub, run_id)
    for r in reports if ledger is not None else []:
        assert ledger is not None
        data = json_bytes(r.model_dump(mode="json"))
        ledger.append("eval-report", data=data, note=f"{r.model} on {r.fold}")


def prepare(
    site: SiteConfig | SiteRef,
    chem: ChemConfig,
    tasks: list[TaskSpec] | None,
    hub_url: str | None = None,
    progress: Progress | None = None,
) -> PrepareReport:
    """Prepare the site's own data; the site's config, not the caller's (``hub_url``: the
    hub the report will go to, checked before anything runs)."""
    from fedchem.data.prepare import (
        prepare_site,  # RDKit + Dask: only the preparing step needs them
    )

    own = own_site(site, hub_url=hub_url)  # on its worker: its own config file only
    check_featurizer(own, chem)
    return prepare_site(own, chem, tasks, progress=progress)


def publish_prepare_report(
    hub_url: str, report: PrepareReport, site: SiteConfig | SiteRef | None = None
) -> str:
    """Put the site's counts on the hub (the coordinator's only view of site data); signed
    and recorded in the site's ledger when ``site`` (its own config) has a signing key."""
    path = HubLayout.site_prepared(report.site)
    hub = HubStore(hub_url)
    own = own_site(site, hub_url=hub_url) if site is not None else None
    signer = site_signer(own) if own is not None else None
    if own is None or signer is None:
        hub.put_json(path, report.model_dump(mode="json"))
        return path
    report = signer.sign("prepare-report", report)
    data = json_bytes(report.model_dump(mode="json"))
    Ledger(hub, SITE_SCOPE, signer, own.workdir / "ledger").append(
        "prepare-report", path=path, data=data
    )
    hub.put_bytes(path, data)
    return path


def evaluate_global(
    site: SiteConfig | SiteRef,
    hub_url: str,
    run_id: str,
    rnd: int,
    chem: ChemConfig,
    model: ModelConfig,
    select: Selection = "last",
) -> EvalReport:
    """A committed global model on the site's test fold (``select="best_valid"``: the round
    up to ``rnd`` best on its validation fold)."""
    own, hub = own_site(site, hub_url=hub_url), HubStore(hub_url)
    report = site_lib.evaluate_global_at_site(own, hub, run_id, rnd, chem, model, select)
    _record_reports(own, hub, run_id, [report])
    return report


def train_local_baseline(
    site: SiteConfig,
    chem: ChemConfig,
    model: ModelConfig,
    train: TrainConfig,
    epochs: int,
    label_stats: dict[str, dict[str, float]],
    publish_to: tuple[str, str] | None = None,
) -> EvalReport:
    """The site's local-only model; ``publish_to=(hub_url, run_id)`` also puts its weights on
    the hub for the cross-site evaluation (shared heads only, and only when its policy lets
    its models leave)."""
    own = own_site(site, hub_url=publish_to[0] if publish_to is not None else None)
    if publish_to is not None:  # before training: the policy may not let the model leave
        SiteGuard.load(own).check_share_local_models()
    report, arrays = baselines.train_local_only(own, chem, model, train, epochs, label_stats)
    if publish_to is not None:
        hub_url, run_id = publish_to
        hub = HubStore(hub_url)
        baselines.publish_baseline(hub, run_id, own.name, arrays, site_ledger(own, hub, run_id))
    return report


def evaluate_baselines(
    site: SiteConfig,
    hub_url: str,
    run_id: str,
    owners: list[str],
    chem: ChemConfig,
    model: ModelConfig,
) -> list[EvalReport]:
    """Other sites' published local-only models, scored on this site's test fold."""
    own = own_site(site, hub_url=hub_url)
    hub = HubStore(hub_url)
    reports = [
        baselines.evaluate_baseline_at_site(own, hub, run_id, owner, chem, model)
        for owner in owners
    ]
    _record_reports(own, hub, run_id, reports)
    return reports


def calibrate_for_serving(
    site: SiteConfig | SiteRef,
    hub_url: str,
    run_id: str,
    rnd: int,
    chem: ChemConfig,
    model: ModelConfig,
    private_tasks: list[str],
    model_name: str,
) -> tuple[SiteCalibration, int]:
    """The site's calibration of round ``rnd``'s model: counts to the hub (signed, in its
    ledger), its exact scores and private heads to its own registry (they stay at the site).
    Returns the message and the version of the site's part in its registry."""
    from fedchem.federation.calibration import calibrate_site, publish_site_part
    from fedchem.registry.store import Registry

    own = own_site(site, hub_url=hub_url)
    hub = HubStore(hub_url)
    result = calibrate_site(own, hub, run_id, rnd, chem, model, private_tasks)
    signer, path = site_signer(own), HubLayout(run_id).site_calibration(own.name)
    message = result.message if signer is None else signer.sign("calibration", result.message)
    data = json_bytes(message.model_dump(mode="json"))
    ledger = site_ledger(own, hub, run_id)
    if ledger is not None:
        ledger.append("calibration", round=rnd, path=path, data=data)
    hub.put_bytes(path, data)
    version = publish_site_part(Registry(own.registry_url()), model_name, result)
    return result.message, version


def validate_registered(
    site: SiteConfig | SiteRef,
    registry: str,
    refs: list[str],
    fold: Literal["valid", "test"] = "valid",
    compare: PromotionPolicy | None = None,
) -> tuple[dict[str, EvalReport], PairedDifference | None]:
    """Each registered version of ``refs`` on the site's current validation (or test) fold
    (aggregates). ``compare`` with two refs (candidate, production) and the confidence rule:
    the candidate's report carries the paired comparison with production on the same
    molecules (the difference and its bootstrap interval), also returned."""
    from fedchem.federation.continual import score_registered
    from fedchem.registry.store import Registry

    own = own_site(site, registries=[registry])
    reg, mine = Registry(registry), Registry(own.registry_url())
    versions = [reg.resolve(ref) for ref in refs]
    reports, paired = score_registered(
        reg, versions, site_lib.load_site_dataset(own), own.name, mine, fold, compare
    )
    out = dict(zip(refs, reports, strict=True))
    if paired is not None:
        out[refs[0]] = out[refs[0]].model_copy(update={"paired": paired.as_dict()})
    return out, paired
