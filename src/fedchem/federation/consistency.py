"""Cross-site consistency, the coordinator's side: do the sites' reference-set hashes agree?

Every site reports a hash per component of its pipeline run on the shipped reference set
(:func:`fedchem.chem.consistency.consistency_report`); no round starts while they disagree,
and the error names the site and the component. Plain comparisons of strings: no chemistry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from fedchem.messages import PrepareReport

__all__ = [
    "COMPONENTS",
    "ConsistencyError",
    "check_consistency",
    "describe_disagreements",
    "find_disagreements",
]

#: compared in this order; the first differing one is the most likely cause
COMPONENTS = ("key", "config", "versions", "output")


class ConsistencyError(RuntimeError):
    """Sites disagree on the pipeline: a federation round must not start."""


def find_disagreements(reports: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    """Site → components where it differs from the majority of sites (ties: the first site)."""
    out: dict[str, list[str]] = {}
    sites = list(reports)
    for comp in COMPONENTS:
        values = [reports[s].get(comp, "<missing>") for s in sites]
        counts = Counter(values)
        top = max(counts.values())
        reference = next(v for v in values if counts[v] == top)
        for site, value in zip(sites, values, strict=True):
            if value != reference:
                out.setdefault(site, []).append(comp)
    return out


def describe_disagreements(reports: Mapping[str, Mapping[str, str]]) -> str | None:
    """A readable account of who differs on what, or None when every site agrees."""
    diff = find_disagreements(reports)
    if not diff:
        return None
    lines = []
    for site, comps in diff.items():
        detail = ", ".join(f"{c} ({reports[site].get(c, '<missing>')[:16]})" for c in comps)
        lines.append(f"site {site} differs on {detail}")
    return "sites disagree on the reference set: " + "; ".join(lines)


def check_consistency(reports: Sequence[PrepareReport]) -> None:
    """Refuse to go on while sites' reference-set hashes disagree; name site and component."""
    missing = [r.site for r in reports if not r.consistency]
    if missing:
        raise ConsistencyError(f"sites without a consistency report: {missing}; re-run preparation")
    problem = describe_disagreements({r.site: r.consistency for r in reports})
    if problem:
        raise ConsistencyError(problem)
