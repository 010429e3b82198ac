"""A site's side of trust: its policy (fail-closed), its key, its budget, its ledger.

:class:`SiteGuard` is loaded from the site's own config (its disk, its worker's environment;
never from the hub or a flow parameter). Before a round trains, the guard checks that the
coordinator's opening is signed by the key the site's policy pins, then every clause of the
policy against the round's plan, then the site's privacy budget with the round's releases
projected; any failure is a :class:`PolicyRefused` naming the clause.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, TrainConfig
from fedchem.messages import DPReport, RoundOpen, RoundPlan
from fedchem.policy import SitePolicy
from fedchem.storage.hub import HubStore
from fedchem.trust.budget import PrivacyBudget, Release
from fedchem.trust.dp import Steps, noise_for_epsilon
from fedchem.trust.ledger import Ledger
from fedchem.trust.signing import COORDINATOR, KeyRing, SignatureRejected, Signer

__all__ = ["PolicyRefused", "RoundPrivacy", "SiteGuard", "load_policy", "site_signer"]

M = TypeVar("M", bound=BaseModel)


def site_signer(site: SiteConfig) -> Signer | None:
    """The site's signing key, where its config names one (no policy needed to sign)."""
    if site.signing_key_file is None:
        return None
    return Signer.from_file(site.name, site.signing_key_file)


class PolicyRefused(RuntimeError):
    """The site's policy says no: ``clause`` is the rule, ``reason`` the limit and the ask."""

    def __init__(self, clause: str, reason: str) -> None:
        super().__init__(f"refused by the site's policy, clause {clause}: {reason}")
        self.clause, self.reason = clause, reason


def load_policy(site: SiteConfig) -> tuple[SitePolicy, str]:
    """The site's policy and the SHA-256 of its file; a missing or invalid one refuses."""
    if site.policy_file is None:
        raise PolicyRefused(
            "policy",
            "the site has no policy (policy_file in its config): it takes part in no round",
        )
    try:
        raw = Path(site.policy_file).read_bytes()
    except OSError as exc:
        raise PolicyRefused("policy", f"policy file unreadable ({type(exc).__name__})") from exc
    try:
        policy = SitePolicy.model_validate(yaml.safe_load(raw))
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()[:3]
        raise PolicyRefused("policy", f"policy file invalid: {' '.join(first)}"[:300]) from exc
    if policy.site != site.name:
        raise PolicyRefused("site", f"the policy is for {policy.site!r}, not {site.name!r}")
    return policy, hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class RoundPrivacy:
    """The releases a round makes of the site's data, and the budget after them."""

    level: str
    noise_multiplier: float
    clip: float
    delta: float
    sample_rate: float
    steps: int
    epsilon_run: float
    epsilon_total: float

    def as_steps(self) -> list[Steps]:
        return [Steps(self.sample_rate, self.noise_multiplier, self.steps)]

    def report(self, delta_norm: float | None = None) -> DPReport:
        return DPReport(
            level=self.level,
            noise_multiplier=self.noise_multiplier,
            clip=self.clip,
            delta=self.delta,
            sample_rate=self.sample_rate,
            steps=self.steps,
            epsilon_run=self.epsilon_run,
            epsilon_total=self.epsilon_total,
            delta_norm=delta_norm,
        )


def record_level_shape(n_train: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """DP-SGD's Poisson rate and steps per round: ``q = B / n``, ``epochs / q`` steps."""
    q = min(1.0, batch_size / max(n_train, 1))
    return q, max(1, epochs * math.ceil(1.0 / q))


@dataclass
class SiteGuard:
    name: str
    workdir: Path
    policy: SitePolicy
    policy_sha256: str
    signer: Signer | None
    coordinator: KeyRing | None

    @classmethod
    def load(cls, site: SiteConfig) -> SiteGuard:
        policy, sha = load_policy(site)
        signer = None
        if site.signing_key_file is not None:
            try:
                signer = Signer.from_file(site.name, site.signing_key_file)
            except (OSError, ValueError) as exc:
                raise PolicyRefused("signing_key_file", str(exc)[:300]) from exc
        elif policy.require_signatures:
            raise PolicyRefused(
                "require_signatures", "the site has no signing key (signing_key_file)"
            )
        ring = KeyRing({COORDINATOR: policy.coordinator_key}) if policy.coordinator_key else None
        return cls(site.name, site.workdir, policy, sha, signer, ring)

    # ------------------------------------------------------------------ coordinator messages

    def verify_coordinator(self, kind: str, message: BaseModel) -> None:
        """A coordinator's message (a round opening, a commit, a secure-aggregation list)
        must carry the pinned coordinator's signature."""
        if not self.policy.require_signatures:
            return
        assert self.coordinator is not None  # the policy pins a key when it requires them
        try:
            self.coordinator.verify(kind, message, COORDINATOR)
        except SignatureRejected as exc:
            raise PolicyRefused("coordinator_key", str(exc)) from exc

    def check_round(self, opened: RoundOpen, site_tasks: list[str]) -> RoundPlan:
        """Every clause of the policy against the round's plan (the budget comes after, once
        the site knows its releases)."""
        self.verify_coordinator("round-open", opened)
        plan, p = opened.plan, self.policy
        if plan is None:
            raise PolicyRefused("plan", "the round carries no plan to check the policy against")
        if plan.strategy not in p.allowed_strategies:
            raise PolicyRefused(
                "allowed_strategies",
                f"strategy {plan.strategy!r} is not one of {sorted(p.allowed_strategies)}",
            )
        if plan.quorum < p.min_sites_per_round:
            raise PolicyRefused(
                "min_sites_per_round",
                f"the round commits with {plan.quorum} site(s); the policy needs at least "
                f"{p.min_sites_per_round}",
            )
        if not any(fnmatch.fnmatchcase(opened.run_id, pattern) for pattern in p.runs):
            raise PolicyRefused(
                "runs", f"run {opened.run_id!r} is not one the policy takes part in ({p.runs})"
            )
        # the site's own history, not the coordinator's word: what it trained in this run
        trained = PrivacyBudget.of_site(self.workdir).rounds(opened.run_id)
        if trained and opened.round < trained[-1]:
            raise PolicyRefused(
                "rounds",
                f"round {opened.round} of run {opened.run_id!r}: the site already trained "
                f"round {trained[-1]} of it (round numbers only go up)",
            )
        count = len({*trained, opened.round})
        if opened.round > p.max_rounds or count > p.max_rounds:
            raise PolicyRefused(
                "max_rounds",
                f"round {opened.round} would be the site's round {count} of run "
                f"{opened.run_id!r}; the policy allows {p.max_rounds}",
            )
        if not p.share_heads:
            shared = sorted(set(site_tasks) - set(opened.fit.private_tasks))
            if shared:
                raise PolicyRefused(
                    "share_heads",
                    f"{len(shared)} of the site's task heads would leave it (heads: "
                    f"{plan.heads}); the policy keeps them",
                )
        secure = plan.secure_aggregation
        if p.secure_aggregation.required and secure is None:
            raise PolicyRefused(
                "secure_aggregation.required", "the round's updates are not aggregated securely"
            )
        if secure is not None:
            strangers = sorted(set(plan.sites) - set(p.members) - {self.name})
            if strangers:
                raise PolicyRefused(
                    "members",
                    f"a secure round with parties whose keys the policy does not pin: {strangers}",
                )
            if len(plan.sites) < p.secure_aggregation.min_cohort:
                raise PolicyRefused(
                    "secure_aggregation.min_cohort",
                    f"{len(plan.sites)} sites in the round; the policy unmasks no fewer than "
                    f"{p.secure_aggregation.min_cohort}",
                )
            if plan.compression != "none":  # what no honest config asks (refused there too)
                raise PolicyRefused(
                    "secure_aggregation",
                    f"compression {plan.compression!r} in a secure round: the site sends its "
                    "masked update in the protocol's fixed-point ring only",
                )
        level = plan.privacy.level
        if p.dp.required and level == "none":
            raise PolicyRefused("dp.required", "the round has no differential privacy")
        if p.dp.required and p.dp.level != "any" and level != p.dp.level:
            raise PolicyRefused("dp.level", f"{level}-level DP where the policy needs {p.dp.level}")
        if level != "none" and plan.privacy.delta > p.dp.delta:
            raise PolicyRefused(
                "dp.delta", f"delta {plan.privacy.delta:g} above the policy's {p.dp.delta:g}"
            )
        if level == "none" and p.dp.max_epsilon is not None:
            raise PolicyRefused(
                "dp.max_epsilon",
                "the round has no differential privacy: its epsilon is unbounded, the policy "
                f"allows {p.dp.max_epsilon:g}",
            )
        return plan

    def check_settings(
        self,
        opened: RoundOpen,
        chem: ChemConfig,
        model: ModelConfig,
        train: TrainConfig,
    ) -> None:
        """The settings the site is asked to train with must be the ones the coordinator
        signed into the round's plan (a flow parameter cannot change them), and within the
        policy's training limits."""
        plan = opened.plan
        asked = {
            "chem": chem.model_dump(mode="json"),
            "model": model.model_dump(mode="json"),
            "train": train.model_dump(mode="json"),
        }
        if plan is None or not plan.settings:
            raise PolicyRefused("settings", "the round's plan carries no signed settings")
        differ = sorted(k for k, v in asked.items() if plan.settings.get(k) != v)
        if differ:
            raise PolicyRefused(
                "settings",
                f"{', '.join(differ)} differ from the round's signed plan: a flow parameter "
                "does not decide what the site trains",
            )
        limits = self.policy.training
        lr = train.lr * opened.fit.lr_factor
        checks = [
            (
                "training.max_local_epochs",
                train.local_epochs <= limits.max_local_epochs,
                f"{train.local_epochs} local epochs, the policy allows {limits.max_local_epochs}",
            ),
            (
                "training.lr",
                limits.lr[0] <= lr <= limits.lr[1],
                f"learning rate {lr:g} (lr x this round's factor) outside the policy's "
                f"{limits.lr[0]:g}..{limits.lr[1]:g}",
            ),
            (
                "training.min_batch_size",
                train.batch_size >= limits.min_batch_size,
                f"batch size {train.batch_size} below the policy's {limits.min_batch_size}",
            ),
            (
                "training.max_hidden",
                model.hidden <= limits.max_hidden,
                f"hidden width {model.hidden} above the policy's {limits.max_hidden}",
            ),
            (
                "training.max_depth",
                model.depth <= limits.max_depth,
                f"depth {model.depth} above the policy's {limits.max_depth}",
            ),
            (
                "training.featurizers",
                chem.featurizer in limits.featurizers,
                f"featurizer {chem.featurizer!r} is not one the policy allows",
            ),
        ]
        for clause, ok, why in checks:
            if not ok:
                raise PolicyRefused(clause, why)

    # ----------------------------------------------------------------------------- privacy

    def privacy(
        self, run_id: str, plan: RoundPlan, n_train: int, batch_size: int, epochs: int
    ) -> RoundPrivacy | None:
        """The releases one more update of run ``run_id`` makes of the site's data, and the
        budget after them (every earlier release counted, a retrained round's included);
        refuses when the noise is below the policy's floor or the projected epsilon above its
        ceiling."""
        cfg = plan.privacy
        if cfg.level == "none":
            return None
        if cfg.level == "site":
            q, steps = 1.0, 1
            if cfg.noise_multiplier is None:
                raise PolicyRefused("dp", "site-level DP without a noise multiplier")
            z = cfg.noise_multiplier
        else:
            q, steps = record_level_shape(n_train, batch_size, epochs)
            z = cfg.noise_multiplier or noise_for_epsilon(
                float(cfg.target_epsilon or 0), cfg.delta, q, steps * plan.rounds
            )
        if z < self.policy.dp.min_noise_multiplier:
            raise PolicyRefused(
                "dp.min_noise_multiplier",
                f"noise multiplier {z:.3g} below the policy's "
                f"{self.policy.dp.min_noise_multiplier:g}",
            )
        budget = PrivacyBudget.of_site(self.workdir)
        delta = self.policy.dp.delta
        eps_run, eps_total = budget.projected(run_id, [Steps(q, z, steps)], delta)
        cap = self.policy.dp.max_epsilon
        if cap is not None and eps_total > cap:
            raise PolicyRefused(
                "dp.max_epsilon",
                f"the site's budget would reach epsilon {eps_total:.3g} at delta {delta:g}; "
                f"the policy allows {cap:g}",
            )
        return RoundPrivacy(cfg.level, z, cfg.clip, delta, q, steps, eps_run, eps_total)

    def spend(self, run_id: str, rnd: int, base_sha256: str, spent: RoundPrivacy | None) -> None:
        """Record the update of round ``rnd`` trained from ``base_sha256`` as released, with
        its DP releases (``None``: without DP): before it leaves the site, so never
        under-counted."""
        level, steps = ("none", ()) if spent is None else (spent.level, tuple(spent.as_steps()))
        release = Release(run_id, rnd, base_sha256, level, steps)
        PrivacyBudget.of_site(self.workdir).record(release)

    # ------------------------------------------------------------------------ publishing

    def sign(self, kind: str, message: M) -> M:
        return message if self.signer is None else self.signer.sign(kind, message)

    def ledger(self, hub: HubStore, scope: str) -> Ledger | None:
        if self.signer is None:
            return None
        return Ledger(hub, scope, self.signer, self.workdir / "ledger")

    def check_share_local_models(self) -> None:
        if not self.policy.share_local_models:
            raise PolicyRefused(
                "share_local_models", "the site's local-only model may not leave it"
            )
