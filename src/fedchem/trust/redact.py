"""A site's own strings kept out of the log lines that leave it.

Site flows log counts and aggregates only, but a log line can still quote a row by accident:
an exception from a library that names the value it choked on, a message built from a
record. Everything a site flow logs through the orchestrator's log handler reaches the
orchestrator's database, which the coordinator's operator reads. :class:`SiteDataFilter`,
attached to those handlers at the site, replaces every SMILES and compound id of the site's
own measurement table in a record's message and traceback with ``[site data]`` before the
record is sent (the site's console gets the same redacted line).

Limits, said plainly: it knows the strings the site's table holds, so it finds a SMILES or id
quoted as a token (whitespace, quotes, commas or brackets around it), not a value transformed
on the way (a canonicalized SMILES the table does not hold, a label printed as a number).
Numbers are never redacted (they are what aggregates look like).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import pandas as pd

__all__ = ["REDACTED", "SiteDataFilter", "redact", "site_strings"]

REDACTED = "[site data]"
_TOKEN = re.compile(r"[^\s'\",;]+")
_EDGES = "()[]{}<>.:=!?"


def _kept(value: str) -> bool:
    """Strings worth redacting: not empty, not a short number (a count looks like one)."""
    if len(value) < 3:
        return False
    return not (value.isdigit() and len(value) < 6)


@lru_cache(maxsize=8)
def _strings_of(path: str, mtime_ns: int) -> frozenset[str]:
    frame = pd.read_csv(path, dtype=str, usecols=lambda c: c in ("smiles", "compound_id"))
    values = (v for col in frame.columns for v in frame[col].dropna())
    return frozenset(v.strip() for v in values if _kept(v.strip()))


def site_strings(measurements: Path) -> frozenset[str]:
    """The SMILES and compound ids of a site's measurement table (read once per change)."""
    try:
        return _strings_of(str(measurements), measurements.stat().st_mtime_ns)
    except (OSError, ValueError):
        return frozenset()


def _trims(token: str) -> Iterator[tuple[int, int]]:
    """(i, j): ``token[i:len - j]`` with up to three punctuation characters cut from each end
    (a SMILES quoted as ``([Na+].[Cl-]);`` is still found, one ending in a bracket keeps it)."""
    n = len(token)
    for i in range(min(4, n)):
        if i and token[i - 1] not in _EDGES:
            break
        for j in range(min(4, n - i)):
            if j and token[n - j] not in _EDGES:
                break
            yield i, j


def _redact_token(token: str, private: frozenset[str]) -> str:
    n = len(token)
    for i, j in _trims(token):
        if token[i : n - j] in private:
            return token[:i] + REDACTED + token[n - j :]
    if "=" in token:  # key=value, or a value quoted after an equals sign: each side alone
        return "=".join(_redact_token(p, private) if p else p for p in token.split("="))
    return token


def redact(text: str, private: frozenset[str]) -> str:
    """``text`` with every token that is one of ``private`` (or is one, once stripped of the
    brackets and punctuation around it) replaced by :data:`REDACTED`."""

    def one(match: re.Match[str]) -> str:
        return _redact_token(match.group(0), private)

    return _TOKEN.sub(one, text) if private else text


class SiteDataFilter(logging.Filter):
    """Redact a site's strings from every record a handler sends (see the module docstring)."""

    def __init__(self, site: str, private: Iterable[str]) -> None:
        super().__init__()
        self.site, self.private = site, frozenset(private)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.private)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text, self.private)
        return True
