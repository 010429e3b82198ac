"""Folded Morgan fingerprints as sorted on-bit indices (the sparse form the model consumes)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from fedchem.types import IntArray

__all__ = ["morgan_bits", "morgan_bits_from_smiles"]


@lru_cache(maxsize=8)
def _generator(radius: int, fp_size: int) -> rdFingerprintGenerator.FingerprintGenerator64:
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=fp_size)


def morgan_bits(mol: Chem.Mol, radius: int = 3, fp_size: int = 4096) -> IntArray:
    """On-bit indices (ascending, int64) of the folded Morgan fingerprint of ``mol``."""
    fp = _generator(radius, fp_size).GetFingerprint(mol)
    return np.fromiter(fp.GetOnBits(), dtype=np.int64)


def morgan_bits_from_smiles(smiles: str, radius: int = 3, fp_size: int = 4096) -> IntArray:
    """Convenience for already-standardized SMILES; raises ``ValueError`` if it does not parse."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"SMILES does not parse: {smiles!r}")
    return morgan_bits(mol, radius, fp_size)
