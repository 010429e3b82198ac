"""What crosses a site's boundary: small messages of counts, aggregate metrics and hashes.

Sites publish these to the hub and the coordinator reads them; none holds a SMILES, a compound
id, a label or any per-row value. This module imports nothing but pydantic, so the coordinator
and anything that only reads the hub never load RDKit, Dask or torch for them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fedchem.policy import PrivacyConfig, SecAggPlan
from fedchem.strict import StrictModel
from fedchem.types import Codec

__all__ = [
    "DPReport",
    "EvalReport",
    "FitInstructions",
    "LedgerEntry",
    "PrepareReport",
    "RoundManifest",
    "RoundOpen",
    "RoundPlan",
    "RowAccount",
    "Signature",
    "SiteCalibration",
    "SiteRefusal",
    "SiteUpdateManifest",
]


class Signature(StrictModel):
    """An Ed25519 signature (base64) and the id of the key that made it
    (:mod:`fedchem.trust.signing` says what it covers)."""

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    value: str


class RowAccount(StrictModel):
    """Rows in, accepted and quarantined at one step; the three always add up."""

    step: str
    rows_in: int
    accepted: int
    quarantined: int

    @model_validator(mode="after")
    def _balanced(self) -> RowAccount:
        if self.rows_in != self.accepted + self.quarantined:
            raise ValueError(
                f"{self.step}: rows in {self.rows_in} != accepted {self.accepted} "
                f"+ quarantined {self.quarantined}"
            )
        return self


class PrepareReport(StrictModel):
    """What a site may tell the federation about its preparation: counts, never rows."""

    site: str
    cache_key: str
    cache_hit: bool
    accounts: list[RowAccount]
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    n_molecules: int
    n_labels: int
    labels_per_task: dict[str, int]
    label_stats: dict[str, dict[str, float]]
    dataset_sha256: str
    auto_thresholds: dict[str, float] = Field(default_factory=dict)
    tasks_below_quorum: dict[str, str] = Field(default_factory=dict)
    consistency: dict[str, str] = Field(
        default_factory=dict,
        description="hashes of the reference set's output, config, versions, key fingerprint",
    )
    fold_shares: dict[str, float] = Field(
        default_factory=dict, description="share of the site's molecules in each fold"
    )
    supported_columns: list[int] = Field(
        default_factory=list,
        description="feature columns on in at least fedchem.data.dataset.MIN_SUPPORT training "
        "molecules (the applicability domain; a column seen in fewer is not reported)",
    )
    warnings: list[str] = Field(
        default_factory=list, description="what the site's data engineer should look at"
    )
    seconds: float
    signature: Signature | None = None


class FitInstructions(StrictModel):
    """What the coordinator's strategy asks every site to apply in a round."""

    proximal_mu: float = Field(0.0, ge=0, description="FedProx: mu/2*||w - w_global||^2")
    lr_factor: float = Field(
        1.0, gt=0, description="this round's factor on the sites' learning rate (the schedule)"
    )
    private_tasks: list[str] = Field(
        default_factory=list,
        description="tasks whose head rows stay at each site (MELLODDY's private heads): "
        "trained and kept there between rounds, uploaded as zeros",
    )


class RoundPlan(StrictModel):
    """What a round asks of a site, beyond its fit instructions: what the site's policy is
    checked against before it trains."""

    strategy: str = Field(description="the aggregation strategy's name")
    sites: list[str] = Field(description="the federation's members this round")
    quorum: int = Field(ge=1, description="accepted updates the round needs to commit")
    rounds: int = Field(ge=1, description="the rounds the run is planned for")
    heads: str = Field(description="shared or private")
    privacy: PrivacyConfig = PrivacyConfig()
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="the consortium settings the round trains with (chem, model, train), as "
        "the coordinator signs them: a site trains only with these, within its policy's limits",
    )
    secure_aggregation: SecAggPlan | None = Field(
        None, description="the updates are aggregated securely (the coordinator sees the sum)"
    )
    compression: Codec = Field(
        "none", description="how updates travel: none (fp32 weights), fp16, bf16, int8 (deltas)"
    )


class RoundOpen(StrictModel):
    """The coordinator's word on one round: its go (once per round and coordinator attempt), or
    that the round is withdrawn (the federation stopped before it; booked runs end)."""

    run_id: str
    round: int = Field(ge=1)
    ticket: str = Field(description="the coordinator attempt that opened the round")
    fit: FitInstructions
    opened_at: str
    withdrawn: bool = Field(
        False, description="the round will not run: runs booked for it end without training"
    )
    plan: RoundPlan | None = None
    signature: Signature | None = None


class EvalReport(StrictModel):
    """A model scored at a site on one of its folds: aggregates only."""

    site: str
    model: str
    fold: str
    n_molecules: int
    per_task: dict[str, dict[str, float]]
    summary: dict[str, float]
    selected: int | None = Field(
        None,
        description="the round (federated) or epoch (baselines, from 1) chosen on the site's "
        "validation fold; None: the last one",
    )
    conformal: dict[str, float] = Field(
        default_factory=dict,
        description="conformal prediction calibrated on the site's validation fold, measured "
        "on this fold: mean coverage and efficiency (share of single-class sets), interval "
        "coverage and width (in units of the task's scale)",
    )
    paired: dict[str, float | int | str] | None = Field(
        None,
        description="a candidate's report when the site compared it with production on the "
        "same molecules: the metric, both values, the difference (> 0: the candidate is "
        "better), its bootstrap standard error and interval",
    )


class PersonalizedReport(StrictModel):
    """A site's personalized federated model: the option its validation fold chose (the
    federated model as it is, or its heads, or heads and last layer, fine-tuned: only when
    better with confidence), each option's validation score, and the chosen model on the test
    fold. Aggregates only."""

    site: str
    choice: str
    metric: str
    valid: dict[str, float]
    gain_lower: dict[str, float] = Field(
        default_factory=dict,
        description="each fine-tuned option's gain over the federated model on validation: "
        "the lower end of its one-sided interval (> 0: better with confidence)",
    )
    test: EvalReport


class DPReport(StrictModel):
    """The differential privacy a site's update was made under, and its budget so far."""

    level: str
    noise_multiplier: float
    clip: float
    delta: float
    sample_rate: float = Field(description="record level: Poisson rate; site level: 1")
    steps: int = Field(description="noisy steps in this round (site level: 1)")
    epsilon_run: float = Field(description="epsilon at delta of this run up to this round")
    epsilon_total: float = Field(
        description="the site's whole budget spent, every run it took part in, at delta"
    )
    delta_norm: float | None = Field(
        None, description="site level: the L2 norm of the uploaded delta, after clipping"
    )


class SiteUpdateManifest(StrictModel):
    run_id: str
    round: int = Field(ge=1)
    site: str
    n_examples: int = Field(gt=0, description="training molecules: the FedAvg weight")
    n_labels: int
    steps: int | None = Field(
        None,
        ge=1,
        description="optimizer steps taken this round: the norm screen compares updates per "
        "step (a site with ten times the molecules moves about ten times as far)",
    )
    update_path: str
    update_sha256: str
    update_bytes: int = Field(0, ge=0, description="the update's size as sent")
    codec: Codec = Field("none", description="none (fp32 weights) or the delta's codec")
    base_sha256: str = Field(description="hash of the global model this update started from")
    train_loss: float
    train_seconds: float
    site_seconds: float = Field(
        0.0, description="the whole site step: load, train, evaluate, upload"
    )
    device: str
    valid: EvalReport
    shapes: dict[str, list[int]] = Field(
        default_factory=dict, description="every array of the update: its shape"
    )
    policy_sha256: str | None = Field(None, description="the site policy it was made under")
    dp: DPReport | None = None
    secure: bool = Field(
        False, description="the update is masked (secure aggregation): only its sum is readable"
    )
    ledger_seq: int | None = Field(None, description="the site's ledger entry of the update")
    ledger_sha256: str | None = None
    signature: Signature | None = None


class RoundManifest(StrictModel):
    """A committed round: the global model's path and hash, and who contributed."""

    run_id: str
    round: int = Field(ge=0)
    global_path: str
    global_sha256: str
    aggregation: str
    outcome: Literal["aggregated", "failed"] = Field(
        "aggregated",
        description="failed: too few accepted updates (the quorum); the global model is the "
        "round before's, unchanged",
    )
    reason: str = Field("", description="why a failed round failed (counts and site names)")
    server_state_path: str | None = Field(
        None, description="strategy state (e.g. server momentum) to continue from; no site data"
    )
    server_state_sha256: str | None = None
    sites: list[str]
    missing: list[str] = Field(default_factory=list, description="sites that did not reply")
    missing_reasons: dict[str, str] = Field(
        default_factory=dict, description="why each missing site is missing (down, late, failed)"
    )
    rejected: dict[str, str] = Field(
        default_factory=dict, description="updates refused before aggregation, with the reason"
    )
    config_digest: dict[str, str] = Field(
        default_factory=dict,
        description="round 0: a hash per config section; a resumed run must match it",
    )
    excluded: list[str] = Field(
        default_factory=list, description="sites that replied but the strategy left out (Krum)"
    )
    n_examples: dict[str, int]
    valid_summary: dict[str, dict[str, float]]
    valid_score: dict[str, float] = Field(
        default_factory=dict, description="the strategy's example-weighted validation summary"
    )
    round_seconds: float | None = Field(None, description="round start to commit, wall time")
    created_at: str
    dp: dict[str, float] = Field(
        default_factory=dict,
        description="site-level DP: noise_multiplier, clip, delta and the run's epsilon so far",
    )
    site_epsilon: dict[str, float] = Field(
        default_factory=dict,
        description="record-level DP: each contributing site's epsilon of the run so far, as "
        "its manifest reports it (at its policy's delta)",
    )
    signature: Signature | None = None


class SiteCalibration(StrictModel):
    """A site's calibration of a federated model, as it may leave the site: per task the
    validation fold's conformal scores binned into counts, and the domain scores' counts."""

    run_id: str
    round: int
    site: str
    global_sha256: str
    n_valid: int
    tasks: dict[str, dict[str, object]] = Field(
        description="task -> {kind, n, hist (per class for classification), scale}"
    )
    domain_hist: list[int] | None = None
    signature: Signature | None = None


class SiteRefusal(StrictModel):
    """A site's no to a round: the clause of its policy the round would break."""

    run_id: str
    round: int = Field(ge=1)
    site: str
    clause: str = Field(description="the policy clause, e.g. dp.max_epsilon")
    reason: str = Field(description="the clause's limit against what the round asked")
    policy_sha256: str | None = None
    at: str
    signature: Signature | None = None


class LedgerEntry(StrictModel):
    """One link of a party's audit chain: an object it sent, or a decision it took.

    ``prev_sha256`` is the SHA-256 of the previous entry's canonical JSON (its signature
    included), so an entry removed, inserted or altered breaks the chain after it.
    """

    seq: int = Field(ge=0)
    prev_sha256: str | None
    actor: str
    scope: str = Field(description="the run id, or 'site' for what is not one run's")
    kind: str
    round: int | None = None
    subject: str | None = Field(None, description="the party the entry is about, if another")
    path: str | None = Field(None, description="the object on the hub, relative to its root")
    sha256: str | None = Field(None, description="the object's bytes")
    size: int | None = None
    refs: dict[str, str] = Field(
        default_factory=dict, description="other entries this one relies on, by their hash"
    )
    note: str = Field("", description="aggregate words only, e.g. a rejection's reason")
    at: str
    signature: Signature | None = None
