"""Featurizers by name, and the keyed column permutation.

A featurizer maps one standardized molecule to sorted on-column indices and, for count
features, their values (``None`` for bits). It sees one molecule only, so its output never
depends on the rest of a batch. Pick one by name in :class:`fedchem.config.ChemConfig`
(``featurizer: morgan``); add one with :func:`register_featurizer` or name any function as
``package.module:function`` (importable in the worker processes).

With ``permute_columns`` the folded columns are relabelled by a permutation derived from the
consortium key (HMAC-SHA256 of each column index, then argsort, as MELLODDY did): the weights
that reach the hub cannot be read back as substructure bits without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from fedchem.types import FloatArray, IntArray

__all__ = [
    "Featurizer",
    "column_permutation",
    "featurizer_names",
    "get_featurizer",
    "morgan_bits",
    "morgan_bits_from_smiles",
    "register_featurizer",
]

#: (molecule, radius, fp_size) → (sorted column indices, values or None for bits)
Featurizer = Callable[[Chem.Mol, int, int], tuple[IntArray, FloatArray | None]]

_REGISTRY: dict[str, Featurizer] = {}


def register_featurizer(name: str) -> Callable[[Featurizer], Featurizer]:
    """Decorator: make a featurizer available by ``name`` in the chemistry config."""

    def deco(fn: Featurizer) -> Featurizer:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"featurizer {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def featurizer_names() -> list[str]:
    return sorted(_REGISTRY)


@lru_cache(maxsize=32)
def get_featurizer(name: str) -> Featurizer:
    """A registered name, or ``package.module:function``; an unknown name is an error."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"featurizer {name!r} cannot be imported: {exc}") from exc
        if not callable(fn):
            raise ValueError(f"featurizer {name!r} is not callable")
        return fn  # type: ignore[no-any-return,unused-ignore]
    raise ValueError(
        f"unknown featurizer {name!r}; registered: {', '.join(featurizer_names())}, "
        "or name one as 'package.module:function'"
    )


@lru_cache(maxsize=16)
def _morgan(
    radius: int, fp_size: int, features: bool
) -> rdFingerprintGenerator.FingerprintGenerator64:
    inv = rdFingerprintGenerator.GetMorganFeatureAtomInvGen() if features else None
    return rdFingerprintGenerator.GetMorganGenerator(
        radius=radius, fpSize=fp_size, atomInvariantsGenerator=inv
    )


@lru_cache(maxsize=4)
def _atom_pair(fp_size: int) -> rdFingerprintGenerator.FingerprintGenerator64:
    return rdFingerprintGenerator.GetAtomPairGenerator(fpSize=fp_size)


def _on_bits(fp: object) -> IntArray:
    return np.fromiter(fp.GetOnBits(), dtype=np.int64)  # type: ignore[attr-defined]


def morgan_bits(mol: Chem.Mol, radius: int = 3, fp_size: int = 4096) -> IntArray:
    """On-bit indices (ascending, int64) of the folded Morgan fingerprint of ``mol``."""
    dense = _morgan(radius, fp_size, False).GetFingerprintAsNumPy(mol)
    return np.flatnonzero(dense).astype(np.int64)


@register_featurizer("morgan")
def _morgan_bits(mol: Chem.Mol, radius: int, fp_size: int) -> tuple[IntArray, FloatArray | None]:
    """ECFP-like folded Morgan bits (radius 3 = ECFP6)."""
    return morgan_bits(mol, radius, fp_size), None


@register_featurizer("morgan_counts")
def _morgan_counts(mol: Chem.Mol, radius: int, fp_size: int) -> tuple[IntArray, FloatArray | None]:
    """Folded Morgan counts: how often each environment occurs."""
    counts = _morgan(radius, fp_size, False).GetCountFingerprintAsNumPy(mol)
    idx = np.flatnonzero(counts).astype(np.int64)
    return idx, counts[idx].astype(np.float32)


@register_featurizer("fcfp")
def _fcfp_bits(mol: Chem.Mol, radius: int, fp_size: int) -> tuple[IntArray, FloatArray | None]:
    """Feature-class Morgan bits (FCFP): pharmacophoric atom invariants."""
    return _on_bits(_morgan(radius, fp_size, True).GetFingerprint(mol)), None


@register_featurizer("atom_pair")
def _atom_pair_bits(mol: Chem.Mol, radius: int, fp_size: int) -> tuple[IntArray, FloatArray | None]:
    """Folded atom-pair bits (``radius`` unused)."""
    return _on_bits(_atom_pair(fp_size).GetFingerprint(mol)), None


def morgan_bits_from_smiles(smiles: str, radius: int = 3, fp_size: int = 4096) -> IntArray:
    """Convenience for already-standardized SMILES; raises ``ValueError`` if it does not parse."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"SMILES does not parse: {smiles!r}")
    return morgan_bits(mol, radius, fp_size)


@lru_cache(maxsize=8)
def column_permutation(key: bytes, fp_size: int) -> IntArray:
    """``new_column[old]``: the keyed relabelling of ``fp_size`` columns (a bijection)."""
    scores = [hmac.new(key, str(i).encode(), hashlib.sha256).digest() for i in range(fp_size)]
    order = np.array(sorted(range(fp_size), key=scores.__getitem__), dtype=np.int64)
    new_of_old = np.empty(fp_size, dtype=np.int64)
    new_of_old[order] = np.arange(fp_size, dtype=np.int64)
    new_of_old.setflags(write=False)
    return new_of_old
