"""Configuration models, read once at the edge and trusted afterwards.

Every model forbids unknown keys, so a typo in a YAML file or a flow parameter is an error
that names the key instead of a setting silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from fedchem.policy import (
    SUM_STRATEGIES,
    PrivacyConfig,
    PromotionPolicy,
    SecAggPlan,
    TrustConfig,
)
from fedchem.strategy_config import FedAvgMConfig, StrategyConfig
from fedchem.strict import StrictModel
from fedchem.types import Codec

__all__ = [
    "ChemConfig",
    "ConfigFileError",
    "DeploymentConfig",
    "FederationConfig",
    "FoldConfig",
    "LabelConfig",
    "ModelConfig",
    "PrepareConfig",
    "PublishConfig",
    "Selection",
    "SimulationConfig",
    "SiteConfig",
    "SiteRef",
    "StandardizeConfig",
    "TaskSpec",
    "TrainConfig",
    "WarmStart",
    "load_config",
    "load_federation_config",
    "read_config",
    "read_yaml_mapping",
    "resolve_site",
    "site_from_env",
    "validate_config",
]


_M = TypeVar("_M", bound=BaseModel)


class StandardizeConfig(StrictModel):
    """Structure standardization steps (MELLODDY-TUNER order), each switchable."""

    max_heavy_atoms: int = Field(100, ge=1, description="molecules at or above this are rejected")
    metal_disconnect: bool = True
    normalize: bool = True
    reionize: bool = True
    charge_parent: bool = Field(True, description="largest organic fragment, neutralized")
    remove_isotopes: bool = True
    remove_stereo: bool = False
    tautomer: bool = Field(False, description="canonical tautomer (costly: ~5x slower)")
    max_tautomers: int = Field(256, ge=1, description="tautomer enumeration bound")


class LabelConfig(StrictModel):
    """From measurements to tasks: automatic thresholds and task quorum (MELLODDY's rules).

    Quorum defaults are off (0) so small demo sites keep their tasks; MELLODDY used 25 actives
    and 25 inactives per classification task, 50 points with 25 uncensored per regression task.
    """

    auto_thresholds: tuple[float, ...] = Field(
        (8.0, 7.0, 6.0, 5.0, 4.7, 4.4),
        description="tried in order for continuous assays without a threshold that the "
        "catalogue declares as classification",
    )
    auto_min_active_fraction: float = Field(0.2, ge=0, le=1)
    auto_min_per_class: int = Field(25, ge=0)
    min_actives: int = Field(0, ge=0, description="classification quorum per task and site")
    min_inactives: int = Field(0, ge=0)
    min_regression_points: int = Field(0, ge=0, description="regression quorum per task and site")
    min_uncensored: int = Field(0, ge=0)


class FoldConfig(StrictModel):
    """How molecules are dealt to folds (``fedchem.chem.folds``): keyed, context-free."""

    method: Literal["scaffold", "scaffold_skeleton"] = Field(
        "scaffold_skeleton",
        description="scaffold: the Murcko scaffold (MELLODDY; acyclic molecules all share one "
        "fold); scaffold_skeleton: the scaffold for ring systems of min_scaffold_rings rings "
        "or more, the molecule's generic skeleton otherwise",
    )
    min_scaffold_rings: int = Field(
        2, ge=1, description="smallest ring system folded by its scaffold (scaffold_skeleton)"
    )
    max_fold_share: float = Field(
        0.35, gt=0, le=1, description="warn when one fold holds more of a site's molecules"
    )


class ChemConfig(StrictModel):
    """What every site must compute identically (the consortium's pinned pipeline).

    Its hash, with the library versions and the key's fingerprint, is what sites compare on the
    reference set before a federation starts.
    """

    standardize: StandardizeConfig = StandardizeConfig()
    labels: LabelConfig = LabelConfig()
    featurizer: str = Field(
        "morgan",
        description="a registered featurizer name (morgan, morgan_counts, fcfp, atom_pair) "
        "or 'package.module:function'",
    )
    fp_radius: int = Field(3, ge=1, le=6, description="Morgan radius (3 = ECFP6)")
    fp_size: int = Field(4096, ge=64, le=1 << 20, description="folded fingerprint width")
    permute_columns: bool = Field(
        True, description="permute feature columns with the consortium key (hub never sees it)"
    )
    folds: FoldConfig = FoldConfig()
    n_folds: int = Field(5, ge=3, le=20)
    test_fold: int = Field(0, ge=0)
    valid_fold: int = Field(1, ge=0)

    @field_validator("valid_fold")
    @classmethod
    def _folds_differ(cls, v: int, info: object) -> int:
        data = getattr(info, "data", {})
        if v == data.get("test_fold"):
            raise ValueError("valid_fold must differ from test_fold")
        return v


class TaskSpec(StrictModel):
    """One task of the federation's shared catalogue (metadata only, never labels)."""

    name: str
    kind: Literal["classification", "regression"]
    weight: float = Field(1.0, gt=0, description="the task's weight in the training loss")
    unit: str | None = Field(None, description="the unit of its values (regression), if known")
    description: str | None = Field(
        None, description="what it measures, in words (model cards and the page show it)"
    )


class ModelConfig(StrictModel):
    hidden: int = Field(512, ge=8)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    depth: int = Field(1, ge=1, le=4, description="dense layers after the sparse input layer")
    head_bias: Literal["zero", "prior"] = Field(
        "zero",
        description="a classification head's round-0 bias: zero, or the pooled log-odds of an "
        "active from the sites' aggregate counts (what DP-SGD needs: see the privacy recipe)",
    )


#: which model a site reports: the last round's (epoch's), or the best on its validation fold
Selection = Literal["last", "best_valid"]


class TrainConfig(StrictModel):
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant",
        description="learning rate over the rounds (a local-only baseline: over the same "
        "epochs): constant, or decaying from lr to lr*lr_min_factor by cosine or linearly",
    )
    lr_min_factor: float = Field(0.1, ge=0, le=1, description="the schedule's last factor")
    weight_decay: float = Field(1e-5, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(True, description="bf16 autocast for the forward pass on CUDA (not CPU)")
    select: Selection = Field(
        "last",
        description="the model a site reports: the last round's, or the round best on the "
        "site's own validation fold (the local-only and pooled baselines then pick their "
        "epoch the same way, so every model gets the same selection)",
    )
    trainable: Literal["all", "top", "head"] = Field(
        "all",
        description="what local training changes: every parameter; the top (the heads and the "
        "last hidden layer: the input layer's bias at depth 1); or the heads only (the rest "
        "stays the global model's: with DP, less noise, on fewer parameters)",
    )
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="sgd: with momentum (what DP training does best with)"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd's momentum")


class SiteConfig(StrictModel):
    """A site as its own operator configures it. The paths never leave the site."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    measurements: Path
    assays: Path
    workdir: Path
    key_file: Path = Field(description="file holding the consortium secret (never leaves the site)")
    contracts_dir: Path | None = Field(
        None, description="default: the repository's data_contracts/"
    )
    max_quarantine_fraction: float = Field(0.5, ge=0.0, le=1.0)
    dask_workers: int = Field(2, ge=1)
    dask_address: str | None = None
    partition_rows: int = Field(5000, ge=100)
    registry: str | None = Field(
        None,
        description="the site's own model registry (a directory or any fsspec URL) for what "
        "stays at the site: private heads, its calibration; default: <workdir>/registry",
    )
    signing_key_file: Path | None = Field(
        None,
        description="the site's Ed25519 private key (fedchem keys new): it signs everything "
        "the site publishes; never leaves the site",
    )
    policy_file: Path | None = Field(
        None,
        description="the site's own privacy policy (YAML, its admin's): without one the site "
        "takes part in no federation round (fail-closed)",
    )
    hub_url: str | None = Field(
        None,
        description="the consortium's hub this site takes part through: a flow parameter "
        "naming another hub is refused (on the site's own worker, one must be named here)",
    )
    registries: list[str] = Field(
        default_factory=list,
        description="the consortium registries the site loads models from (its own registry "
        "is always allowed); on its own worker a flow may name no other",
    )
    batch_dirs: list[Path] = Field(
        default_factory=list,
        description="where batch scoring may read its input and write its output on the "
        "site's own worker (default: <workdir>/batch)",
    )

    def registry_url(self) -> str:
        return self.registry or str(self.workdir / "registry")


class PublishConfig(StrictModel):
    """Which committed round becomes which registered model (``publish`` flow)."""

    registry: str = Field(description="the coordinator's registry: a directory or fsspec URL")
    model_name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    round: int | None = Field(
        None,
        ge=1,
        description="the committed round to publish; default: the best by the "
        "sites' validation (best.json), else the last",
    )
    alias: str | None = Field("production", description="the alias that then points at it")
    parent: str | None = Field(None, description="the version it was trained from, if any")
    calibration_deadline_s: float = Field(
        600.0, gt=0, description="deployed mode: how long the sites' calibration runs may take"
    )


class SiteRef(StrictModel):
    """A site known by name only: its data location lives at the site (deployed mode).

    The site's worker finds its own :class:`SiteConfig` through ``FEDCHEM_SITE_CONFIG``.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")


class DeploymentConfig(StrictModel):
    """How the coordinator reaches sites in deployed mode: one deployment per site and flow."""

    site_round: str = Field(
        "site-round/{site}-round", description="deployment of a site's round; {site}: its name"
    )
    round_deadline_s: float = Field(900.0, gt=0, description="how long a round waits for sites")
    min_sites: int | None = Field(
        None,
        ge=1,
        description="quorum: fewest accepted updates a round commits with (default: all); "
        "applies in both modes",
    )
    poll_interval_s: float = Field(
        0.25,
        gt=0,
        description="how often the coordinator looks for the sites' replies on the hub (one "
        "listing) and, until they run, at the sites' runs (one API read); run states are read "
        "at most once a second while waiting for replies",
    )
    cancel_grace_s: float = Field(
        60.0,
        gt=0,
        description="when the federation stops, how long its site runs get to end after "
        "their cancel; a run still going then is marked Cancelled",
    )
    book_ahead: int = Field(
        1,
        ge=0,
        description="create the site runs of this many rounds ahead: they start and wait on "
        "the hub until their round opens, so that a run's start (worker poll, process, engine) "
        "overlaps the rounds before; 0: create each round's runs when it starts",
    )


class FaultConfig(StrictModel):
    """What a round does when sites fail or send bad updates."""

    policy: Literal["tolerate", "strict"] = Field(
        "tolerate",
        description="tolerate: a round commits while the quorum (deployment.min_sites) of "
        "accepted updates holds; strict: every site must send an accepted update",
    )
    max_norm_ratio: float = Field(
        10.0,
        gt=1,
        description="reject an update this many times farther from the global "
        "model than the round's median update",
    )
    min_for_norm_check: int = Field(
        3, ge=2, description="the norm check needs at least this many well-formed updates"
    )
    failed_rounds: Literal["continue", "stop"] = Field(
        "continue",
        description="a round with fewer accepted updates than the quorum is recorded as failed "
        "(the global model stays that of the round before); continue: the next round starts, "
        "until max_failed_in_a_row rounds in a row failed; stop: the run ends there",
    )
    max_failed_in_a_row: int = Field(
        3, ge=1, description="with failed_rounds: continue, the run ends after this many"
    )


class SimulationConfig(StrictModel):
    """How ``mode: local`` runs the sites' steps of a round: as Prefect subflows one after
    another (each a run in the UI, about a second of overhead each), or all at once in Dask
    worker processes (:mod:`fedchem.federation.parallel`: the same protocol, no subflow per
    site step; for many sites). ``auto``: subflows up to ``subflows_up_to`` sites, Dask above."""

    engine: Literal["auto", "subflows", "dask"] = "auto"
    subflows_up_to: int = Field(8, ge=0, description="auto: the most sites run as subflows")
    dask_address: str | None = Field(
        None, description="a Dask scheduler (its workers reach the sites' files and the hub)"
    )
    workers: int | None = Field(
        None, ge=1, description="local cluster's worker processes (default: one per core)"
    )

    def uses_dask(self, n_sites: int) -> bool:
        return self.engine == "dask" or (self.engine == "auto" and n_sites > self.subflows_up_to)


class WarmStart(StrictModel):
    """Start a federation from a registered model instead of a fresh initialisation."""

    registry: str = Field(description="the coordinator's registry")
    model: str = Field(description="NAME@ALIAS or NAME:VERSION, e.g. tox21@production")
    parts: Literal["all", "trunk"] = Field(
        "all",
        description="all: the registered model as is (same tasks); trunk: its input and hidden "
        "layers only, the heads new (a public base model trained on other tasks)",
    )


#: DP-SGD's settings under ``privacy.level: record`` where the config leaves them unset, the
#: recipe that measured best on the Tox21 demo (benchmarks/README.md, "Differential privacy
#: that pays"): batches of 512, a clip above most molecules' gradient norms (a clip of 4 or
#: less cuts the actives' gradients and the heads learn molecule size instead of activity),
#: heads that start at the base rate
DP_RECORD_RECIPE: dict[str, dict[str, Any]] = {
    "train": {"batch_size": 512, "lr": 0.01},
    "model": {"head_bias": "prior"},
    "privacy": {"clip": 12.0},
}
#: ... and, starting from a public base model, only the heads trained privately
DP_RECORD_WITH_BASE: dict[str, Any] = {"trainable": "head"}


class FederationConfig(StrictModel):
    """The coordinator's view: sites by name, the task catalogue, rounds, model and training.

    ``mode: local`` runs every site's flow as a subflow in this process (simulation; sites are
    full :class:`SiteConfig`); ``mode: deployed`` triggers each site's own deployment on its own
    work pool, and sites may be named only (:class:`SiteRef`).
    """

    run_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    hub_url: str
    mode: Literal["local", "deployed"] = "local"
    deployment: DeploymentConfig = DeploymentConfig()
    simulation: SimulationConfig = SimulationConfig()
    faults: FaultConfig = FaultConfig()
    sites: list[SiteConfig | SiteRef]
    tasks: list[TaskSpec]
    rounds: int = Field(10, ge=1)
    chem: ChemConfig = ChemConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    strategy: StrategyConfig = Field(
        default_factory=FedAvgMConfig,
        description="aggregation strategy, chosen by its name (default: FedAvg + server momentum)",
    )
    heads: Literal["shared", "private"] = Field(
        "shared",
        description="shared: every task head is federated; private: the trunk is federated and "
        "each site keeps its own heads, except the tasks in shared_tasks",
    )
    shared_tasks: list[str] = Field(
        default_factory=list, description="with heads: private, tasks with a federated head"
    )
    init_from: WarmStart | None = Field(
        None, description="round 0 is this registered model (same architecture and tasks)"
    )
    trust: TrustConfig | None = Field(
        None,
        description="every member's pinned public key and the coordinator's own: updates, "
        "round openings and commits are signed and checked, and every party keeps an audit "
        "ledger; without it nothing is signed (and sites whose policy requires signatures "
        "refuse every round)",
    )
    privacy: PrivacyConfig = Field(
        PrivacyConfig(), description="differential privacy: none, site level or record level"
    )
    secure_aggregation: SecAggPlan | None = Field(
        None,
        description="aggregate the updates securely (fedchem.secagg): the coordinator and the "
        "hub see masked updates and their sum only; needs trust (signed rounds) and a strategy "
        "that aggregates a sum",
    )
    compression: Codec = Field(
        "none",
        description="how the sites send their updates (fedchem.model.compress): the weights in "
        "fp32, or the delta in 16 or 8 bits with error feedback, all-zero rows left out",
    )

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, v: list[SiteConfig | SiteRef]) -> list[SiteConfig | SiteRef]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        if not v:
            raise ValueError("a federation needs at least one site")
        return v

    @model_validator(mode="before")
    @classmethod
    def _record_level_recipe(cls, data: Any) -> Any:
        """Under ``privacy.level: record``, the settings left unset take DP-SGD's recipe
        (:data:`DP_RECORD_RECIPE`; with ``init_from`` a public base: heads only)."""
        if not isinstance(data, dict):
            return data
        privacy = data.get("privacy")
        level = (
            privacy.level if isinstance(privacy, PrivacyConfig) else (privacy or {}).get("level")
        )
        if level != "record":
            return data
        out = dict(data)
        recipe = dict(DP_RECORD_RECIPE)
        if out.get("init_from") is not None:
            recipe["train"] = {**recipe["train"], **DP_RECORD_WITH_BASE}
        for section, values in recipe.items():
            given = out.get(section) or {}
            if isinstance(given, StrictModel):
                given = given.model_dump(mode="json", exclude_unset=True)
            out[section] = {**values, **given}
        return out

    @model_validator(mode="after")
    def _local_mode_needs_site_configs(self) -> FederationConfig:
        if self.mode == "local":
            named = [s.name for s in self.sites if not isinstance(s, SiteConfig)]
            if named:
                raise ValueError(f"mode 'local' needs each site's full config; only names: {named}")
        unknown = sorted(set(self.shared_tasks) - {t.name for t in self.tasks})
        if unknown:
            raise ValueError(f"shared_tasks not in the task catalogue: {unknown}")
        q = self.deployment.min_sites
        if q is not None and q > len(self.sites):
            raise ValueError(f"deployment.min_sites={q} exceeds the {len(self.sites)} sites")
        if self.trust is not None:
            lacking = sorted(set(self.site_names) - set(self.trust.sites))
            if lacking:
                raise ValueError(f"trust.sites has no public key for: {lacking}")
        if self.privacy.level == "site" and self.strategy.name not in SUM_STRATEGIES:
            raise ValueError(
                f"site-level DP wraps strategies that aggregate a sum ({sorted(SUM_STRATEGIES)});"
                f" {self.strategy.name!r} is not one: noise calibrated to one site's clipped "
                "delta does not bound what an order statistic or a selection releases. Use "
                "record-level DP (privacy.level: record) with it instead"
            )
        secure = self.secure_aggregation
        if secure is not None:
            why = secure_aggregation_refusal(self, secure)
            if why is not None:
                raise ValueError(f"secure_aggregation: {why}")
            if self.compression != "none":
                raise ValueError(
                    f"compression {self.compression!r} with secure_aggregation: the masked "
                    "update is already fixed-point encoded in a ring (its own quantization), "
                    "and a codec's scales would be per site; use compression: none with it"
                )
        if self.privacy.level == "record" and self.strategy.name == "fedprox":
            raise ValueError(
                "record-level DP-SGD clips per-example gradients; FedProx's proximal term is "
                "not one, so the two are not combined: use fedavg or fedavgm with it"
            )
        return self

    def private_tasks(self) -> list[str]:
        """Tasks whose heads stay at the sites (none unless ``heads: private``)."""
        if self.heads == "shared":
            return []
        return [t.name for t in self.tasks if t.name not in set(self.shared_tasks)]

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    def quorum(self) -> int:
        """Fewest accepted updates a round commits with."""
        if self.faults.policy == "strict":
            return len(self.sites)
        return self.deployment.min_sites or len(self.sites)


def secure_aggregation_refusal(config: FederationConfig, plan: SecAggPlan) -> str | None:
    """Why ``config`` cannot aggregate securely (None: it can)."""
    n = len(config.sites)
    if config.trust is None:
        return "it needs trust (every party's pinned keys): its messages are signed"
    if config.strategy.name not in SUM_STRATEGIES:
        return (
            f"strategy {config.strategy.name!r} needs every update on its own (an order "
            f"statistic or a selection); the coordinator sees only the sum: use one of "
            f"{sorted(SUM_STRATEGIES)}"
        )
    if config.privacy.level == "site":
        return (
            "site-level DP adds the noise at the coordinator, to the sum it would see "
            "un-noised; use record-level DP (each site's own noise) with it"
        )
    if n < plan.min_cohort:
        return f"{n} sites, below the minimum cohort of {plan.min_cohort}"
    if n * plan.clip * (1 << plan.fraction_bits) >= 1 << 31:
        return (
            f"{n} sites x clip {plan.clip:g} x 2^{plan.fraction_bits} overflows the 32-bit "
            "ring: lower fraction_bits or clip"
        )
    return None


class PrepareConfig(StrictModel):
    """``fedchem prepare --config``: one site's files, the consortium's pipeline, its tasks.

    ``tasks`` is the federation's task catalogue; left out, it is derived from the site's own
    assay table (binary or thresholded assays → classification, others → regression).
    """

    site: SiteConfig
    chem: ChemConfig = ChemConfig()
    tasks: list[TaskSpec] | None = None


class DemoConfig(StrictModel):
    """``fedchem demo --config``: a simulated federation on a public table, with baselines.

    ``dataset`` is a bundled name (``tox21``, ``lipophilicity``, ``biogen``, ``chembl``) or a
    wide CSV path (relative to the YAML file). ``task_split: disjoint`` gives each site its
    own targets (use with ``heads: private``); ``continuous_as: classification`` thresholds
    continuous columns at each site by the automatic rule.
    """

    dataset: str = "tox21"
    smiles_col: str | None = Field(None, description="default: the bundled set's, else 'smiles'")
    sites: int = Field(
        4,
        ge=1,
        le=1000,
        description="how many sites the dataset is dealt into (site-a... up to 26, then "
        "site-001...); above simulation's subflows_up_to their rounds run in Dask workers",
    )
    rounds: int = Field(10, ge=1)
    seed: int = Field(0, description="the split's seed, and the training seed")
    task_split: Literal["shared", "disjoint"] = "shared"
    continuous_as: Literal["regression", "classification"] = "regression"
    heads: Literal["shared", "private"] = "shared"
    strategy: StrategyConfig = Field(default_factory=FedAvgMConfig)
    chem: ChemConfig = ChemConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    cycles: int = Field(
        1,
        ge=1,
        le=5,
        description="turns of the federation that keeps learning: from cycle 2 "
        "on, the sites' held-back rows arrive, a warm-started candidate is trained and the "
        "promotion policy decides whether it becomes production",
    )
    promotion: PromotionPolicy = Field(
        default_factory=PromotionPolicy,
        description="when a cycle's candidate becomes production (with cycles > 1)",
    )
    personalize: bool = Field(
        True,
        description="each site also makes the federated model its own (as it is, heads, or "
        "heads and last layer fine-tuned, chosen on its validation fold), up to 16 sites",
    )
    arrivals: Literal["measured", "shuffled"] = Field(
        "measured",
        description="with cycles > 1: the later cycles' rows as measured, or (a drill for the "
        "promotion gate) with their values shuffled within each assay: a candidate trained on "
        "them must not be promoted",
    )
    hold_back: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="with cycles > 1: the share of each site's molecules "
        "that arrive in later cycles",
    )
    privacy: PrivacyConfig = Field(
        PrivacyConfig(),
        description="differential privacy of the federation (e.g. --privacy.level record "
        "--privacy.target_epsilon 3)",
    )
    secure_aggregation: bool = Field(
        False,
        description="aggregate the updates securely (the coordinator sees masked updates and "
        "their sum only; the cross-site matrix of local models is then left out)",
    )
    compression: Codec = Field(
        "none", description="how the sites send their updates (see FederationConfig)"
    )
    simulation: SimulationConfig = Field(
        default_factory=SimulationConfig,
        description="the sites' steps as subflows or in Dask workers (auto: by their number)",
    )


class ConfigFileError(ValueError):
    """A configuration file that does not validate; the message says where."""


_SITE_PATHS = ("measurements", "assays", "workdir", "key_file", "contracts_dir", "registry")


def _anchor_site_paths(site: object, base: Path) -> None:
    """Relative site paths in a YAML file are relative to that file, not to the shell."""
    if not isinstance(site, dict):
        return
    for k in _SITE_PATHS:
        v = site.get(k)
        if isinstance(v, str) and v and "://" not in v and not Path(v).is_absolute():
            site[k] = str(base / v)


def read_yaml_mapping(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A YAML file whose top level must be a mapping; anything else raises ``error(path: why)``."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a YAML mapping at the top level")
    return raw


def read_config(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    """A YAML config as a mapping, its relative paths anchored at the file (not validated)."""
    path = Path(path)
    raw = read_yaml_mapping(path, ConfigFileError)
    base = path.resolve().parent
    _anchor_site_paths(raw.get("site"), base)
    dataset = raw.get("dataset")
    hub = raw.get("hub_url")
    if isinstance(hub, str) and hub and "://" not in hub and not Path(hub).is_absolute():
        raw["hub_url"] = str(base / hub)  # a local hub directory, relative to the YAML too
    is_path = isinstance(dataset, str) and ("/" in dataset or "." in dataset)
    if model is DemoConfig and is_path and not Path(str(dataset)).is_absolute():
        raw["dataset"] = str(base / str(dataset))
    sites = raw.get("sites")
    for site in sites if isinstance(sites, list) else []:
        _anchor_site_paths(site, base)
    return raw


def validate_config(raw: dict[str, Any], model: type[_M], source: str) -> _M:
    """``raw`` as ``model``; an error lists each bad key as a dotted path, naming ``source``."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or '<top>'}: {e['msg']}" for e in exc.errors()
        ]
        raise ConfigFileError(
            f"{source}: {exc.error_count()} error(s)\n" + "\n".join(lines)
        ) from exc


def load_config(path: Path, model: type[_M]) -> _M:
    """Read a YAML config into ``model``; an error lists each bad key as a dotted path."""
    return validate_config(read_config(path, model), model, str(path))


#: where a site's worker finds its own config (a YAML with a ``site:`` section)
SITE_CONFIG_ENV = "FEDCHEM_SITE_CONFIG"


def site_from_env(name: str) -> SiteConfig:
    """The config of site ``name`` from ``$FEDCHEM_SITE_CONFIG`` (the site's own worker).

    The coordinator never holds a site's paths; a worker configured for another site refuses.
    """
    path = os.environ.get(SITE_CONFIG_ENV)
    if not path:
        raise ConfigFileError(
            f"site {name!r} was named without its config and ${SITE_CONFIG_ENV} is not set: "
            "run site flows on the site's own worker"
        )
    site = load_config(Path(path), PrepareConfig).site
    if site.name != name:
        raise ConfigFileError(f"this worker serves site {site.name!r}, not {name!r} ({path})")
    return site


def resolve_site(site: SiteConfig | SiteRef) -> SiteConfig:
    return site if isinstance(site, SiteConfig) else site_from_env(site.name)


def load_federation_config(path: Path) -> FederationConfig:
    """Read a federation YAML file; errors name the offending key."""
    return load_config(path, FederationConfig)
