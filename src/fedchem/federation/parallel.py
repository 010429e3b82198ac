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

:func:`at_sites` does the same for the steps beside the rounds (evaluation, the local-only
baselines, the cross-site scores, calibration: :mod:`fedchem.federation.steps`), and
:func:`sites_engine` gives a simulation one cluster for all of them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fedchem.config import FederationConfig, SimulationConfig, SiteConfig
from fedchem.federation.driver import InProcessSites, site_step
from fedchem.storage.hub import HubStore

__all__ = ["DaskSites", "SiteStepFailed", "at_sites", "dask_sites", "local_cluster", "sites_engine"]

_log = logging.getLogger(__name__)

#: environment of local workers: one thread of math each (N processes on N cores)
_ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


#: glibc's allocator in local workers, set before they start (Dask's
#: ``distributed.nanny.pre-spawn-environ``): Dask's default trims the heap back to the OS at
#: every free (``MALLOC_TRIM_THRESHOLD_=65536``), so the training step's model-sized buffers
#: are page-faulted in afresh at every step, which halved a worker's molecules a second
#: (``benchmarks/bench_moses_federation.py``); here freed memory stays for the next step.
_ALLOCATOR = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(64 << 20)}


def local_cluster(workers: int | None = None) -> Any:
    """A Dask cluster of ``workers`` processes on this machine (default: one per core)."""
    import dask
    from distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **_ALLOCATOR}
    before = {k: os.environ.get(k) for k in _ALLOCATOR}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env=_ONE_THREAD,
            )
    finally:  # Dask sets them in this process to pass them on: not for what it starts next
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


class SiteStepFailed(RuntimeError):
    """A site's step failed in its worker. Only the exception's type travels back (the
    message may quote the site's data); the whole error is in the worker's own log."""

    def __init__(self, site: str, step: str, kind: str) -> None:
        super().__init__(site, step, kind)
        self.site, self.step, self.kind = site, step, kind

    def __str__(self) -> str:
        return f"site {self.site}: {self.step} failed ({self.kind}; see the site's log)"


def _site_step(step: str, site: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        _log.exception("site %s: %s failed", site, step)  # in the site's (the worker's) log
        raise SiteStepFailed(site, step, type(exc).__name__) from None


def at_sites(
    step: str,
    fn: Callable[..., Any],
    calls: Sequence[tuple[str, tuple[Any, ...]]],
    address: str | None = None,
    workers: int | None = None,
) -> list[Any]:
    """``fn(*args)`` for every ``(site, args)`` of ``calls``, all submitted at once to the Dask
    cluster at ``address`` (a local one of ``workers`` processes, started and stopped here,
    without one); in order, each a result or the site's :class:`SiteStepFailed`. ``fn`` is a
    library step (:mod:`fedchem.federation.steps`) that runs under the site's own config."""
    from distributed import Client

    cluster = None if address else local_cluster(workers)
    try:
        with Client(address or cluster) as client:
            futures = [
                client.submit(_site_step, step, site, fn, *args, pure=False) for site, args in calls
            ]
            out: list[Any] = []
            for (site, _), f in zip(calls, futures, strict=True):
                try:
                    out.append(f.result())
                except SiteStepFailed as exc:
                    out.append(exc)
                except Exception as exc:  # the worker itself died
                    out.append(SiteStepFailed(site, step, type(exc).__name__))
            return out
    finally:
        if cluster is not None:
            cluster.close()


def dask_sites(config: FederationConfig) -> list[SiteConfig] | None:
    """The federation's sites where a local simulation runs their steps in Dask (every site
    a full config, more than ``simulation.subflows_up_to`` of them or ``engine: dask``);
    None where each site's step is its own flow run (subflows, or its deployment)."""
    if config.mode != "local":
        return None
    local = [s for s in config.sites if isinstance(s, SiteConfig)]
    many = len(local) == len(config.sites) and config.simulation.uses_dask(len(local))
    return local if many else None


@contextmanager
def sites_engine(simulation: SimulationConfig, n_sites: int) -> Iterator[str | None]:
    """The Dask scheduler that a simulation of ``n_sites`` runs its sites' steps on, for the
    with-block: the configured address, or a local cluster started here and stopped after;
    None where the configuration runs the sites' steps as subflows."""
    if not simulation.uses_dask(n_sites):
        yield None
        return
    if simulation.dask_address is not None:
        yield simulation.dask_address
        return
    cluster = local_cluster(simulation.workers)
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()
