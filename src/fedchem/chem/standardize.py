"""Structure standardization, one molecule at a time (context-free by construction).

Steps, in order: parse; reject empty input; reject molecules at or above the heavy-atom limit;
charge parent (largest organic fragment, then neutralized); isotopes removed; canonical SMILES.
A failure is returned as a reason, never raised, so the batch layer can quarantine the row.
"""

from __future__ import annotations

from typing import NamedTuple

from rdkit import Chem, RDLogger
from rdkit.Chem.MolStandardize import rdMolStandardize

__all__ = ["StandardizeResult", "standardize_mol", "standardize_smiles"]

RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]

_CHARGE_PARENT = rdMolStandardize.ChargeParent


class StandardizeResult(NamedTuple):
    """Outcome for one input SMILES: exactly one of ``smiles`` and ``reason`` is set."""

    smiles: str | None
    """canonical SMILES of the standardized parent"""
    reason: str | None
    """why the molecule was rejected"""


def standardize_mol(mol: Chem.Mol, max_heavy_atoms: int) -> Chem.Mol | str:
    """Standardize a parsed molecule; return the parent molecule or a rejection reason."""
    try:
        parent = _CHARGE_PARENT(mol)
    except Exception as exc:  # RDKit raises many types for exotic inputs
        return f"standardization failed: {type(exc).__name__}"
    if parent is None or parent.GetNumAtoms() == 0:
        return "no organic parent fragment"
    n_heavy = parent.GetNumHeavyAtoms()
    if n_heavy >= max_heavy_atoms:
        return f"too many heavy atoms ({n_heavy} >= {max_heavy_atoms})"
    for atom in parent.GetAtoms():
        if atom.GetIsotope():
            atom.SetIsotope(0)
    return parent


def standardize_smiles(smiles: str | None, max_heavy_atoms: int = 100) -> StandardizeResult:
    """Parse and standardize one SMILES string into a canonical parent SMILES."""
    if smiles is None or not str(smiles).strip():
        return StandardizeResult(None, "empty SMILES")
    mol = Chem.MolFromSmiles(str(smiles).strip())
    if mol is None:
        return StandardizeResult(None, "unparsable SMILES")
    parent = standardize_mol(mol, max_heavy_atoms)
    if isinstance(parent, str):
        return StandardizeResult(None, parent)
    canonical = Chem.MolToSmiles(parent)
    # round trip: the canonical form must parse back, else downstream steps would disagree
    if Chem.MolFromSmiles(canonical) is None:
        return StandardizeResult(None, "canonical SMILES does not round-trip")
    return StandardizeResult(canonical, None)
