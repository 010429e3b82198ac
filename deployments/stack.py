"""A real multi-site deployment on one machine: ``fedchem stack up`` / ``fedchem stack down``.

``up`` starts, each as its own process recorded by pid in ``<dir>/stack.json``:
a Prefect server (``prefect server start``; SQLite under ``<dir>``, or Postgres: one started
here under ``<dir>/postgres`` with ``postgres=True``, or any by ``database_url``), an
S3-compatible server for the hub (moto, on loopback), one Prefect process worker per site
(``prefect worker start``) whose environment holds only that site's config file and the hub's
credentials, and the coordinator's worker (hub credentials only).
It writes every site's contract-conformant files (a scaffold split of a public dataset), a
``prefect.yaml`` (from :func:`render_prefect_yaml`), creates the work pools and deploys.
``down`` stops everything ``up`` started, by pid.

The deployments name their flows by module (``fedchem.flows.site_round:site_round``): a worker
runs what the installed fedchem package holds, from any directory, with nothing to pull.
This module drives the ``prefect`` command line in subprocesses; it imports no Prefect.
The deployments it renders are :mod:`fedchem.deployments.render`, its S3 hub
:mod:`fedchem.deployments.s3hub`, its processes :mod:`fedchem.deployments.processes`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from fedchem.config import ChemConfig
from fedchem.deployments.processes import (
    free_port,
    postgres_available,
    spawn,
    start_postgres,
    stop_process_group,
    wait_http,
)
from fedchem.deployments.render import federation_defaults, pool_for, render_prefect_yaml
from fedchem.deployments.s3hub import S3_KEY, S3_SECRET, provision_hub
from fedchem.trust.hub_access import OPERATOR_PARTY, Credentials

__all__ = [
    "WORKER_TYPES",
    "Stack",
    "deploy",
    "stack_down",
    "stack_up",
    "start_site_worker",
]

#: the worker types a stack runs: fedchem's own (warm start) and Prefect's process worker
WORKER_TYPES = ("fedchem", "process")


@dataclass
class Stack:
    """What ``up`` started and where: enough for ``down`` and for tests."""

    dir: str
    api_url: str
    s3_endpoint: str
    hub_url: str
    sites: list[str]
    pids: dict[str, int] = field(default_factory=dict)
    database: str = "sqlite"
    #: the workers' type: fedchem's (flow runs forked warm) or Prefect's ``process``
    worker: str = "fedchem"
    #: the data directory of the stack's own PostgreSQL server (removed by ``down``)
    postgres_dir: str | None = None
    #: the coordinator's model registry (on the stack's S3 server)
    registry_url: str = "s3://fedchem-hub/registry"
    #: every party's own S3 credentials (``<dir>/hub-credentials.json``, mode 0600): the
    #: server enforces what each may read and write (:mod:`fedchem.trust.hub_access`)
    credentials_file: str | None = None
    #: the Prefect API's auth string (``<dir>/prefect-auth``, mode 0600): the server refuses
    #: every request without it (Prefect's own ``PREFECT_SERVER_API_AUTH_STRING``)
    auth_file: str | None = None

    def save(self) -> None:
        Path(self.dir, "stack.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> Stack:
        return cls(**json.loads((directory / "stack.json").read_text()))

    def credentials(self, party: str) -> Credentials:
        """``party``'s S3 credentials (a site's name, ``coordinator``, ``operator``); before
        the parties are provisioned, the set-up ones."""
        if self.credentials_file is None or not Path(self.credentials_file).exists():
            return Credentials(S3_KEY, S3_SECRET)
        doc = json.loads(Path(self.credentials_file).read_text())
        if party not in doc:
            raise KeyError(f"no hub credentials for {party!r} (parties: {sorted(doc)})")
        return Credentials(**doc[party])

    def env(self, party: str = OPERATOR_PARTY, **extra: str) -> dict[str, str]:
        """A clean environment for a stack process: Prefect at this server, and ``party``'s
        hub credentials (a site's worker: the site's; the coordinator's worker: its own;
        set-up, tests and audits: the operator's)."""
        creds = self.credentials(party)
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "FEDCHEM_", "AWS_"))
        }
        base.update(
            {
                "PREFECT_API_URL": self.api_url,
                "PREFECT_HOME": str(Path(self.dir, "prefect-home")),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                # the stack's server runs without CSRF protection (Prefect's default) and with
                # this very install: a client's first write would ask for a CSRF token only to
                # be told it needs none, and each process would ask the server's version;
                # ~10 % of the stack's API requests (benchmarks/README.md)
                "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "false",
                "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
                "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false",
                "AWS_ACCESS_KEY_ID": creds.access_key,
                "AWS_SECRET_ACCESS_KEY": creds.secret_key,
                "AWS_ENDPOINT_URL": self.s3_endpoint,
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        if self.auth_file is not None and Path(self.auth_file).exists():
            base["PREFECT_API_AUTH_STRING"] = Path(self.auth_file).read_text().strip()
        base.update(extra)
        return base

    def server_env(self) -> dict[str, str]:
        """The Prefect server's environment: its own auth string, which every client needs."""
        env = self.env()
        if "PREFECT_API_AUTH_STRING" in env:
            env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
        return env


def _prefect_exe() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def _prefect(stack: Stack, *args: str, env: dict[str, str] | None = None) -> None:
    res = subprocess.run(
        [_prefect_exe(), *args],
        env=env or stack.env(),
        cwd=stack.dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode != 0:
        out = (res.stdout + "\n" + res.stderr)[-4000:]
        raise RuntimeError(f"prefect {' '.join(args)} failed (exit {res.returncode}):\n{out}")


def stack_up(
    directory: Path,
    dataset: Path,
    n_sites: int = 2,
    rounds: int = 2,
    seed: int = 0,
    database_url: str | None = None,
    chem: ChemConfig | None = None,
    run_id: str = "stack-run",
    smiles_col: str = "smiles",
    postgres: bool | None = None,
    worker: str = "fedchem",
) -> Stack:
    """Start the whole stack (see the module docstring); stop it with :func:`stack_down`.

    The Prefect server keeps its state in a PostgreSQL server the stack starts itself
    (``postgres=True``; Debian's ``postgresql`` package), or in SQLite under ``directory``
    (``postgres=False``); ``None`` takes PostgreSQL when its programs are installed. Unpatched,
    Prefect's SQLite setup logs ``database is locked`` under the stack's load and rounds are
    slower (``benchmarks/README.md``). ``database_url`` names any other database.

    ``worker``: the work pools' and workers' type, ``fedchem``
    (:mod:`fedchem.deployments.worker`: each flow run forked from a process that imported
    Prefect, torch and the flows once) or Prefect's ``process`` (a fresh interpreter per run).
    """
    if worker not in WORKER_TYPES:
        raise ValueError(f"worker type {worker!r}: one of {', '.join(WORKER_TYPES)}")
    from fedchem.config import PrepareConfig
    from fedchem.demo.sites import split_into_sites

    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    chem = chem or ChemConfig()
    api_port, s3_port = free_port(), free_port()
    stack = Stack(
        dir=str(directory),
        api_url=f"http://127.0.0.1:{api_port}/api",
        s3_endpoint=f"http://127.0.0.1:{s3_port}",
        hub_url="s3://fedchem-hub/hub",
        sites=[],
        worker=worker,
    )
    try:
        stack.auth_file = str(_write_secret(directory / "prefect-auth", _auth_string()))
        server_env = stack.server_env()
        if postgres is None:
            postgres = database_url is None and postgres_available()
        if postgres:
            pid, database_url, data_dir = start_postgres(directory)
            stack.pids["postgres"] = pid
            stack.database, stack.postgres_dir = "postgres", str(data_dir)
            stack.save()
        elif database_url:
            stack.database = "external"
        if database_url:
            server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
        stack.pids["prefect-server"] = spawn(
            [_prefect_exe(), "server", "start", "--host", "127.0.0.1", "--port", str(api_port)],
            server_env,
            directory / "prefect-server.log",
        )
        stack.pids["s3"] = spawn(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
            stack.env(),
            directory / "s3.log",
        )
        stack.save()
        wait_http(f"{stack.s3_endpoint}/", 60, "the S3 server")
        split = split_into_sites(dataset, smiles_col, n_sites, directory / "sites", seed)
        stack.sites = [s.name for s in split.sites]
        _provision_hub(stack, directory)
        for s in split.sites:  # each site's own config, read by its worker only: its hub and
            # the registry it loads models from are the only ones its flows may name
            own = s.model_copy(
                update={"hub_url": stack.hub_url, "registries": [stack.registry_url]}
            )
            cfg = PrepareConfig(site=own, chem=chem, tasks=split.tasks)
            path = directory / "sites" / s.name / "site.yaml"
            path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        fed = federation_defaults(
            stack.sites, split.tasks, chem, rounds, stack.hub_url, run_id, split.trust
        )
        (directory / "prefect.yaml").write_text(
            render_prefect_yaml(stack.sites, chem, split.tasks, fed)
        )
        wait_http(f"{stack.api_url}/health", 120, "the Prefect server")
        for pool in [*(pool_for(s) for s in stack.sites), "coordinator"]:
            _prefect(stack, "work-pool", "create", pool, "--type", worker, "--overwrite")
        deploy(stack, directory / "prefect.yaml")
        for site in stack.sites:  # each worker sees its own site's config, no other
            start_site_worker(stack, site)
        stack.pids["worker-coordinator"] = spawn(
            _worker_command(stack, "coordinator", "worker-coordinator"),
            stack.env("coordinator"),
            directory / "worker-coordinator.log",
        )
        stack.save()
        return stack
    except BaseException:
        stack.save()
        stack_down(directory)
        raise


def _auth_string() -> str:
    """Prefect's basic-auth string for the stack's API (user ``fedchem``, a random password)."""
    return f"fedchem:{secrets.token_urlsafe(24)}"


def _write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


def _provision_hub(stack: Stack, directory: Path) -> None:
    """:func:`provision_hub` for the stack's sites; the credentials go to a 0600 file."""
    creds = provision_hub(stack.s3_endpoint, stack.sites)
    path = directory / "hub-credentials.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({p: asdict(c) for p, c in creds.items()}, f, indent=1)
    stack.credentials_file = str(path)
    stack.save()


def deploy(stack: Stack, prefect_file: Path) -> None:
    """``prefect deploy --all`` of ``prefect_file`` against the stack's server."""
    env = stack.env(FEDCHEM_HUB_URL=stack.hub_url, FEDCHEM_REGISTRY_URL=stack.registry_url)
    _prefect(stack, "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file), env=env)


def _worker_command(stack: Stack, pool: str, name: str) -> list[str]:
    return [
        _prefect_exe(),
        "worker",
        "start",
        "--pool",
        pool,
        "--name",
        name,
        "--type",
        stack.worker,
    ]


def start_site_worker(stack: Stack, site: str) -> int:
    """Start ``site``'s worker (its own config only in its environment); record its pid."""
    env = stack.env(site, FEDCHEM_SITE_CONFIG=str(Path(stack.dir) / "sites" / site / "site.yaml"))
    pid = spawn(
        _worker_command(stack, pool_for(site), f"worker-{site}"),
        env,
        Path(stack.dir) / f"worker-{site}.log",
    )
    stack.pids[f"worker-{site}"] = pid
    stack.save()
    return pid


def stack_down(directory: Path, timeout: float = 20.0) -> list[str]:
    """Stop every process ``up`` recorded (process groups: workers' flow runs too)."""
    path = directory / "stack.json"
    if not path.exists():
        return []
    stack = Stack.load(directory)
    stopped = []
    for name, pid in reversed(list(stack.pids.items())):
        stop_process_group(pid, timeout)
        stopped.append(name)
    if stack.postgres_dir:
        shutil.rmtree(stack.postgres_dir, ignore_errors=True)
    return stopped
