"""Scaffold-based fold assignment keyed by the consortium secret.

The fold of a molecule is ``HMAC-SHA256(key, murcko_scaffold_smiles) mod n_folds``: the same
molecule lands in the same fold at every site holding the key, and nobody without the key can
predict or steer the split. Acyclic molecules share the empty scaffold and so one fold (as in
MELLODDY; a known weakness).
"""

from __future__ import annotations

import hashlib
import hmac

from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

__all__ = ["fold_of", "key_fingerprint", "scaffold_of"]


def scaffold_of(mol: Chem.Mol) -> str:
    """Canonical SMILES of the Bemis-Murcko scaffold ("" for acyclic molecules)."""
    core = MurckoScaffold.GetScaffoldForMol(mol)
    return Chem.MolToSmiles(core) if core is not None else ""


def fold_of(scaffold: str, key: bytes, n_folds: int = 5) -> int:
    """Fold index in ``[0, n_folds)`` of a scaffold under the consortium key."""
    if not key:
        raise ValueError("the consortium key must not be empty")
    digest = hmac.new(key, scaffold.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % n_folds


def key_fingerprint(key: bytes) -> str:
    """A short public fingerprint of the key, for consistency checks (never the key itself)."""
    return hashlib.sha256(b"fedchem-key-fingerprint:" + key).hexdigest()[:16]
