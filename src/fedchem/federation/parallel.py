"""Many sites at once: the sites' steps of every round in parallel worker processes (Dask).

:class:`DaskSites` is the simulation's launcher for federations of many sites. It is the
in-process launcher (:class:`~fedchem.federation.driver.InProcessSites`: the same round
driver, hub protocol, signatures, policies and secure-aggregation steps) with each site's step
submitted to a Dask cluster instead of run in turn: a local cluster of worker processes by
default (one thread each, their math libraries held to one thread so that N workers use N
cores), or the cluster at ``address`` to go beyond one machine (its workers must reach the
sites' files and the hub). What comes back from a worker is the site's final state and, for
a failure, the exception's type: never a value of the site's. No Prefect: the coordinator flow
records the federation and every round; the sites' steps are not subflows here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from fedchem.config import FederationConfig, SiteConfig
from fedchem.federation.driver import InProcessSites, site_step
from fedchem.storage.hub import HubStore

__all__ = ["DaskSites", "local_cluster"]

#: environment of local workers: one thread of math each (N processes on N cores)
_ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def local_cluster(workers: int | None = None) -> Any:
    """A Dask cluster of ``workers`` processes on this machine (default: one per core)."""
    from distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    return LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env=_ONE_THREAD,
    )


class DaskSites(InProcessSites):
    """Every site's step of a round submitted at once to a Dask cluster (see the module
    docstring); ``down`` and ``drop`` as in :class:`InProcessSites`."""

    def __init__(
        self,
        config: FederationConfig,
        address: str | None = None,
        workers: int | None = None,
        hub: HubStore | None = None,
        down: Callable[[int], Sequence[str]] | None = None,
        drop: Callable[[int, str], Sequence[str]] | None = None,
    ) -> None:
        from distributed import Client

        super().__init__(config, hub, down, drop)
        self._cluster = None if address else local_cluster(workers)
        self._client = Client(address or self._cluster)

    def run_sites(
        self, sites: Sequence[SiteConfig], rnd: int, step: str | None
    ) -> list[tuple[str, str | None]]:
        run_id = self.config.run_id
        futures = [
            self._client.submit(
                site_step,
                *self.step_args(site, rnd, step),
                key=f"{run_id}/round-{rnd:02d}/{site.name}/{step or 'fit'}/{self.ticket}",
                pure=False,
            )
            for site in sites
        ]
        out: list[tuple[str, str | None]] = []
        for f in futures:
            try:
                out.append(f.result())
            except Exception as exc:  # the worker itself died: the site is missing
                out.append(("Crashed", type(exc).__name__))
        return out

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()
