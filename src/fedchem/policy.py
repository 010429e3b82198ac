"""What the parties configure for trust: the coordinator's allowlist of keys, the federation's
differential privacy, each site's own privacy policy (its admin's file, on its own disk), and
the consortium's rule for promoting a candidate model.

Plain pydantic: the coordinator and the messages import it without cryptography or torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedchem.strict import StrictModel
from fedchem.types import PairedMetric

__all__ = [
    "DPPolicy",
    "PrivacyConfig",
    "PromotionPolicy",
    "SecAggPlan",
    "SecAggPolicy",
    "SitePolicy",
    "TrainingLimits",
    "TrustConfig",
    "is_public_key_text",
]

#: strategies whose aggregate is a (weighted) sum: site-level DP noise calibrated to one
#: site's clipped delta bounds them; order statistics (median, trimmed mean) and selection
#: (Krum) are not sums, and the noise would not bound what they release
SUM_STRATEGIES = frozenset({"fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi"})
#: party names that are not sites: the coordinator's key, the stack's operator credentials and
#: the coordinator's secure-aggregation folder (IAM patterns must not match a site so named)
RESERVED_PARTIES = frozenset({"coordinator", "operator", "secagg"})


def is_public_key_text(text: str) -> bool:
    return text.startswith("ed25519:") and len(text) > len("ed25519:")


class TrustConfig(StrictModel):
    """The coordinator's side: every member's pinned public key, and its own key pair."""

    coordinator: str = Field(description="the coordinator's public key, ed25519:<base64>")
    sites: dict[str, str] = Field(
        description="the allowlist: site name -> its public key (ed25519:<base64>); an update "
        "signed by any other key is rejected"
    )
    coordinator_key_file: Path | None = Field(
        None,
        description="the coordinator's private key (on the coordinator's disk; needed to run "
        "rounds, not to read them)",
    )

    @field_validator("coordinator")
    @classmethod
    def _key(cls, v: str) -> str:
        if not is_public_key_text(v):
            raise ValueError("expected ed25519:<base64> (fedchem keys new prints one)")
        return v

    @field_validator("sites")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(s for s, k in v.items() if not is_public_key_text(k))
        if bad:
            raise ValueError(f"not ed25519:<base64> public keys for: {bad}")
        if len(set(v.values())) != len(v):
            raise ValueError("two sites share one public key: every site needs its own")
        reserved = sorted(set(v) & RESERVED_PARTIES)
        if reserved:
            raise ValueError(
                f"{reserved}: reserved party names (a site so named would stand for that "
                "party in every check and audit)"
            )
        return v

    def keyring_entries(self) -> dict[str, str]:
        """Owner -> pinned public key: the coordinator and every site (no site can take the
        coordinator's place: the names are reserved)."""
        return {**self.sites, "coordinator": self.coordinator}


class PrivacyConfig(StrictModel):
    """Differential privacy of a federation (none, site level or record level).

    ``site``: every site clips its model delta to L2 norm ``clip``; the coordinator adds
    Gaussian noise of standard deviation ``noise_multiplier * clip`` to the sum of the deltas
    (DP-FedAvg; the unit protected is a whole site). ``record``: DP-SGD at every site
    (Opacus): each example's gradient clipped to ``clip``, noise ``noise_multiplier * clip``
    per step, batches Poisson-sampled at rate ``batch_size / n``; the unit is one compound.
    Give ``noise_multiplier``, or ``target_epsilon`` to have it calibrated: over the planned
    rounds for site level (by the coordinator), for each site's own data size (record level,
    by each site).
    """

    level: Literal["none", "site", "record"] = "none"
    delta: float = Field(1e-5, gt=0, lt=1)
    clip: float = Field(1.0, gt=0)
    noise_multiplier: float | None = Field(None, gt=0)
    target_epsilon: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_noise_source(self) -> PrivacyConfig:
        if self.level == "none":
            return self
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                f"privacy level {self.level!r}: give exactly one of noise_multiplier and "
                "target_epsilon"
            )
        return self


class DPPolicy(StrictModel):
    required: bool = Field(False, description="refuse rounds without differential privacy")
    level: Literal["any", "site", "record"] = Field(
        "any", description="with required: the level that counts (record is the stronger unit)"
    )
    max_epsilon: float | None = Field(
        None,
        gt=0,
        description="the site's whole budget at delta, over every run it took part in; a "
        "round whose projected epsilon exceeds it is refused",
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta the budget is kept at")
    min_noise_multiplier: float = Field(0.0, ge=0)


class SecAggPlan(StrictModel):
    """How a round's updates are aggregated securely (:mod:`fedchem.secagg`): the coordinator
    learns only the sum. Every coordinate of a site's weighted update is clipped to
    ``[-clip, clip]`` and encoded in steps of ``2^-fraction_bits`` in the ring Z/2^32."""

    clip: float = Field(8.0, gt=0, description="each coordinate of a weighted update, clipped")
    fraction_bits: int = Field(20, ge=4, le=28, description="the fixed-point step is 2^-bits")
    neighbours: int | None = Field(
        None, ge=2, description="SecAgg+: each site masks with this many neighbours (None: all)"
    )
    threshold: int | None = Field(
        None, ge=2, description="shares that rebuild a secret (None: a majority of neighbours)"
    )
    min_cohort: int = Field(3, ge=2, description="fewest survivors the coordinator unmasks")
    graph_seed: str = Field("", description="public randomness of the neighbourhood graph")


class SecAggPolicy(StrictModel):
    required: bool = Field(
        False, description="take part only in rounds whose updates are aggregated securely"
    )
    min_cohort: int = Field(
        3,
        ge=2,
        description="reveal nothing for the unmasking of fewer survivors than this (a cohort "
        "of one is that site's own update; of two, the other's, for either of them)",
    )


class TrainingLimits(StrictModel):
    """What a round may ask a site to train: the settings that change what is computed on its
    data, each within the site's limits (a round asking more is refused, the limit named)."""

    max_local_epochs: int = Field(10, ge=1, description="epochs over the site's data a round")
    lr: tuple[float, float] = Field(
        (1e-6, 0.1), description="the learning rate's allowed range (inclusive)"
    )
    min_batch_size: int = Field(
        16, ge=1, description="smaller batches give single molecules more weight in an update"
    )
    max_hidden: int = Field(8192, ge=8, description="the widest layer the site trains")
    max_depth: int = Field(4, ge=1, description="dense layers after the input layer")
    featurizers: list[str] = Field(
        default_factory=lambda: ["morgan", "morgan_counts", "fcfp", "atom_pair"],
        description="featurizers the site runs on its molecules: the built-in ones by default; "
        "a plug-in (package.module:function) runs only when named here",
    )


class SitePolicy(StrictModel):
    """A site's own rules, owned by its admin; read from its disk, never from the hub or a
    flow parameter. A round that would break a clause is refused, with the clause named."""

    site: str = Field(description="the site this policy is for (a copied file is refused)")
    require_signatures: bool = Field(
        True, description="train only on rounds and models signed by the pinned coordinator"
    )
    coordinator_key: str | None = Field(
        None, description="the pinned coordinator public key (ed25519:<base64>)"
    )
    allowed_strategies: list[str] = Field(
        description="aggregation strategies the site takes part in (by name)"
    )
    min_sites_per_round: int = Field(
        2, ge=1, description="a round must need at least this many sites' updates to commit"
    )
    max_rounds: int = Field(100, ge=1, description="rounds of one run the site trains at most")
    share_local_models: bool = Field(
        False,
        description="whether the site's local-only model may leave it (the cross-site matrix)",
    )
    share_heads: bool = Field(
        True,
        description="whether the site's task heads may leave it; false: only federations "
        "that keep every one of its tasks' heads private",
    )
    dp: DPPolicy = DPPolicy()
    runs: list[str] = Field(
        default_factory=lambda: ["*"],
        description="the run ids the site takes part in (shell patterns, e.g. tox21-weekly-*); "
        "an opening of any other run is refused",
    )
    training: TrainingLimits = TrainingLimits()
    secure_aggregation: SecAggPolicy = SecAggPolicy()
    members: dict[str, str] = Field(
        default_factory=dict,
        description="the consortium's members and their identity keys (ed25519:<base64>): in "
        "a secure round the site trusts another party's keys and shares only when signed by "
        "the key pinned here (the coordinator cannot slip in a party of its own)",
    )

    @model_validator(mode="after")
    def _pinned(self) -> SitePolicy:
        if self.require_signatures and not self.coordinator_key:
            raise ValueError("require_signatures needs coordinator_key (the pinned public key)")
        if self.coordinator_key is not None and not is_public_key_text(self.coordinator_key):
            raise ValueError("coordinator_key: expected ed25519:<base64>")
        if not self.allowed_strategies:
            raise ValueError("allowed_strategies is empty: the site would refuse every round")
        return self


class PromotionPolicy(StrictModel):
    """When a candidate becomes production.

    ``rule: confidence`` (the default) reads each site's paired comparison of candidate and
    production on its validation fold (the difference and its bootstrap interval): the
    candidate is **promoted** when it is better over all sites with confidence (the lower end
    of the pooled interval above ``min_gain``) and no site is worse beyond its tolerance with
    confidence; **refused** when a site is (its whole interval below minus its tolerance) or
    the candidate is worse overall with confidence; otherwise the outcome is **not enough
    evidence** and production stays. ``rule: threshold`` is the gate before: each site's
    validation mean compared as two numbers, refused when one drops by more than
    ``tolerance``."""

    rule: Literal["confidence", "threshold"] = Field(
        "confidence", description="confidence: paired intervals; threshold: two numbers"
    )
    tolerance: float = Field(
        0.01,
        ge=0,
        description="how much worse than production any site may be (ROC-AUC points, or RMSE "
        "in the task's units)",
    )
    site_tolerance: dict[str, float] = Field(
        default_factory=dict, description="a site's own tolerance where it differs"
    )
    confidence: float = Field(0.95, ge=0.5, le=0.999, description="the intervals' confidence level")
    n_bootstrap: int = Field(
        2000, ge=100, le=20000, description="bootstrap resamples of each site's fold"
    )
    min_gain: float = Field(
        0.0, ge=0, description="how much better overall the candidate must be, with confidence"
    )
    metric: str | None = Field(
        None,
        description="the validation summary metric (default: mean_roc_auc, else "
        "mean_pr_auc, mean_r2, mean_rmse for the threshold rule; mean_roc_auc else mean_rmse "
        "for the confidence rule: the first that every site reports)",
    )

    def tolerance_at(self, site: str) -> float:
        return self.site_tolerance.get(site, self.tolerance)

    def paired_metric(self, kinds: tuple[str, ...]) -> PairedMetric:
        """The metric a site compares the two models on (its tasks' kinds decide the
        default)."""
        if self.metric is not None:
            if self.metric not in _PAIRED:
                raise ValueError(
                    f"the confidence rule compares {sorted(_PAIRED)}, not {self.metric!r}"
                )
            return _PAIRED[self.metric]
        return "roc_auc" if "classification" in kinds else "rmse"


_PAIRED: dict[str, PairedMetric] = {"mean_roc_auc": "roc_auc", "mean_rmse": "rmse"}
