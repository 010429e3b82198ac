"""A site's own record of what it released, and its privacy budget: kept on its own disk.

``<workdir>/privacy/budget.json`` lists every update the site released: its run, round, the
global model it trained from (``base_sha256``), the update's hash, and the DP releases the
training made of the site's data (:class:`~fedchem.trust.dp.Steps`; none without DP). It is
the site's history, independent of anything the coordinator writes:

- the rounds the site trained in a run (a policy's ``max_rounds`` counts these, and a round
  before the last one it trained is refused: round numbers only go up);
- the budget spent: the epsilon of the composition of *every* release, at the policy's delta,
  over every run on the site's data (a site-level release protects the whole dataset, so
  composing it into the per-compound budget is conservative).

A release is keyed by (run, round, base model): training a round again from another base (a
coordinator that re-commits a round) is a new release and is charged again; sending the same
update again (a resumed coordinator asks twice) is not a release and costs nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from fedchem.trust.dp import Steps, epsilon

__all__ = ["PrivacyBudget", "Release"]


@dataclass(frozen=True)
class Release:
    """One update that left the site."""

    run_id: str
    round: int
    base_sha256: str
    level: str
    steps: tuple[Steps, ...]

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.run_id, self.round, self.base_sha256)


class PrivacyBudget:
    """The site's release log and the budget it spends (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.releases: dict[tuple[str, int, str], Release] = {}
        if path.exists():
            for r in json.loads(path.read_text()).get("releases", []):
                steps = tuple(
                    Steps(float(s["q"]), float(s["z"]), int(s["count"])) for s in r["steps"]
                )
                release = Release(
                    str(r["run_id"]), int(r["round"]), str(r["base_sha256"]), str(r["level"]), steps
                )
                self.releases[release.key] = release

    @classmethod
    def of_site(cls, workdir: Path) -> PrivacyBudget:
        return cls(workdir / "privacy" / "budget.json")

    def rounds(self, run_id: str) -> list[int]:
        """The rounds of ``run_id`` the site released an update for, in order."""
        return sorted({r.round for r in self.releases.values() if r.run_id == run_id})

    def released(self, run_id: str, rnd: int, base_sha256: str) -> Release | None:
        return self.releases.get((run_id, rnd, base_sha256))

    def _steps(self, run_id: str | None = None) -> list[Steps]:
        return [
            s
            for r in self.releases.values()
            if run_id is None or r.run_id == run_id
            for s in r.steps
        ]

    def projected(self, run_id: str, steps: list[Steps], delta: float) -> tuple[float, float]:
        """(the run's epsilon, the site's total epsilon) once one more release of ``steps``
        is spent."""
        return (
            epsilon(self._steps(run_id) + steps, delta),
            epsilon(self._steps() + steps, delta),
        )

    def record(self, release: Release) -> None:
        """Add ``release`` (one already in the log is not added twice: a re-send)."""
        if release.key in self.releases:
            return
        self.releases[release.key] = release
        doc = {
            "releases": [
                {
                    "run_id": r.run_id,
                    "round": r.round,
                    "base_sha256": r.base_sha256,
                    "level": r.level,
                    "steps": [asdict(x) for x in r.steps],
                }
                for r in self.releases.values()
            ]
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.path)

    def spent(self, delta: float, run_id: str | None = None) -> float:
        return epsilon(self._steps(run_id), delta)
