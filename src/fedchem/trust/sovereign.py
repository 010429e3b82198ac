"""The site owns its configuration: what a flow's parameters may decide at a site, and what not.

On a site's own worker (``$FEDCHEM_SITE_CONFIG`` set), the site's data locations, Dask
address, workdir, keys, policy and registry come from its own config file only. A flow run
handed a full site config is refused, whatever it holds, and so is a location parameter that
the site's config does not name: a hub other than its own, a registry it does not load models
from, a file to score outside its batch directories. Anyone who can reach the Prefect API can
start a site's deployment with parameters of their choosing; none of them can point the site's
data, its Dask work or its key somewhere else.

In a one-process simulation (no site worker: the demo, the tests, ``mode: local``) the
operator plays every party and the full site config is the site's own; a location parameter is
still checked wherever the site's config names its own.

Each refusal raises :class:`~fedchem.trust.site.PolicyRefused` (clause ``parameters``, the
parameter and the reason) and, where the site has a signing key and names its own hub, is
recorded in its ledger (scope ``_site``) before anything runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fedchem.config import (
    SITE_CONFIG_ENV,
    ChemConfig,
    SiteConfig,
    SiteRef,
    resolve_site,
    site_from_env,
)
from fedchem.policy import TrainingLimits
from fedchem.storage.hub import HubStore
from fedchem.trust.ledger import SITE_SCOPE, Ledger
from fedchem.trust.site import PolicyRefused, load_policy, site_signer

__all__ = ["check_featurizer", "on_site_worker", "own_site", "refuse_parameter"]


def on_site_worker() -> bool:
    """Whether this process is a site's own worker (its config from its own disk)."""
    return bool(os.environ.get(SITE_CONFIG_ENV))


def refuse_parameter(site: SiteConfig, parameter: str, reason: str) -> PolicyRefused:
    """The refusal of ``parameter`` (recorded in the site's ledger where it keeps one on its own
    hub); the caller raises it."""
    refused = PolicyRefused("parameters", f"{parameter}: {reason}")
    signer = site_signer(site)
    if signer is not None and site.hub_url:
        # recorded before the refusal is raised; a hub that cannot be written does not turn
        # the refusal into an acceptance
        try:
            ledger = Ledger(HubStore(site.hub_url), SITE_SCOPE, signer, site.workdir / "ledger")
            ledger.append("refused-parameter", subject=parameter, note=reason)
        except OSError:
            pass
    return refused


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in roots)


def own_site(
    site: SiteConfig | SiteRef,
    *,
    hub_url: str | None = None,
    registries: Sequence[str] = (),
    paths: Sequence[str] = (),
) -> SiteConfig:
    """The site's own config for a flow run that names ``site``, with the run's location
    parameters checked against it: ``hub_url`` (the hub the run reads and publishes through),
    ``registries`` (where it loads models from), ``paths`` (files it reads or writes for a
    caller). Raises :class:`~fedchem.trust.site.PolicyRefused` naming the parameter."""
    worker = on_site_worker()
    if worker:
        own = site_from_env(site.name)  # another site's name: refused by the config reader
        if isinstance(site, SiteConfig):
            raise refuse_parameter(
                own,
                "site",
                "a full site config was passed to the site's own worker; its data, workdir, "
                "Dask address, keys and policy come from its own config file only (pass the "
                "site's name)",
            )
    else:
        own = resolve_site(site)
    if hub_url is not None:
        if own.hub_url is not None and not _same_url(hub_url, own.hub_url):
            raise refuse_parameter(
                own, "hub_url", "not the hub the site's config names; the site publishes there only"
            )
        if own.hub_url is None and worker:
            raise refuse_parameter(
                own, "hub_url", "the site's config names no hub (hub_url): it publishes nowhere"
            )
    allowed = [own.registry_url(), *own.registries]
    for registry in registries:
        if (worker or own.registries) and not any(_same_url(registry, r) for r in allowed):
            raise refuse_parameter(
                own,
                "registry",
                "not a registry the site's config names (registries); it loads models from "
                "those only",
            )
    roots = own.batch_dirs or [own.workdir / "batch"]
    for path in paths:
        if not (worker or own.batch_dirs):
            continue
        if "://" in path or not _inside(Path(path), roots):
            raise refuse_parameter(
                own,
                "path",
                "outside the site's batch directories (batch_dirs); a batch run reads and "
                "writes there only",
            )
    return own


def check_featurizer(site: SiteConfig, chem: ChemConfig) -> None:
    """A featurizer runs code on the site's molecules: only one its policy names (without a
    policy, the built-in ones) may, whoever asks for it."""
    try:
        allowed = load_policy(site)[0].training.featurizers
    except PolicyRefused:
        allowed = TrainingLimits().featurizers
    if chem.featurizer not in allowed:
        raise refuse_parameter(
            site,
            "chem.featurizer",
            f"{chem.featurizer!r} is not a featurizer the site's policy allows "
            f"({', '.join(allowed)})",
        )
