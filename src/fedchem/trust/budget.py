"""A site's own privacy budget: every DP release it took part in, kept on its own disk.

``<workdir>/privacy/budget.json`` lists, per (run, round), the releases the round made of the
site's data (:class:`~fedchem.trust.dp.Steps`). The budget spent is the epsilon of their
composition at the policy's delta, over every run on the site's data (a site-level release
protects the whole dataset, so composing it into the per-compound budget is conservative).
A round is projected before it trains; recording it again (a resumed round) changes nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from fedchem.trust.dp import Steps, epsilon

__all__ = ["PrivacyBudget"]


@dataclass(frozen=True)
class _Spent:
    run_id: str
    round: int
    level: str
    steps: tuple[Steps, ...]


class PrivacyBudget:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rounds: dict[tuple[str, int], _Spent] = {}
        if path.exists():
            for r in json.loads(path.read_text()).get("rounds", []):
                steps = tuple(
                    Steps(float(s["q"]), float(s["z"]), int(s["count"])) for s in r["steps"]
                )
                spent = _Spent(str(r["run_id"]), int(r["round"]), str(r["level"]), steps)
                self.rounds[(spent.run_id, spent.round)] = spent

    @classmethod
    def of_site(cls, workdir: Path) -> PrivacyBudget:
        return cls(workdir / "privacy" / "budget.json")

    def _steps(self, run_id: str | None = None, but: tuple[str, int] | None = None) -> list[Steps]:
        return [
            s
            for key, r in self.rounds.items()
            if key != but and (run_id is None or r.run_id == run_id)
            for s in r.steps
        ]

    def projected(
        self, run_id: str, rnd: int, steps: list[Steps], delta: float
    ) -> tuple[float, float]:
        """(the run's epsilon, the site's total epsilon) once round ``rnd`` is spent."""
        key = (run_id, rnd)
        return (
            epsilon(self._steps(run_id, but=key) + steps, delta),
            epsilon(self._steps(but=key) + steps, delta),
        )

    def record(self, run_id: str, rnd: int, level: str, steps: list[Steps]) -> None:
        self.rounds[(run_id, rnd)] = _Spent(run_id, rnd, level, tuple(steps))
        doc = {
            "rounds": [
                {
                    "run_id": r.run_id,
                    "round": r.round,
                    "level": r.level,
                    "steps": [asdict(x) for x in r.steps],
                }
                for r in self.rounds.values()
            ]
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.path)

    def spent(self, delta: float, run_id: str | None = None) -> float:
        return epsilon(self._steps(run_id), delta)
