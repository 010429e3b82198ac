"""Fold assignment keyed by the consortium secret: the same molecule in the same fold at every
site, balanced within each site.

The fold of a molecule is ``HMAC-SHA256(key, fold_key(molecule)) mod n_folds``: it depends on
that molecule and the key only (never on the rest of a batch), so every site holding the key
puts it in the same fold, and nobody without the key can predict or steer the split. Which
string is hashed is :func:`fold_key`'s choice (``chem.folds.method``):

- ``scaffold`` (MELLODDY's rule, kept for comparison): the Bemis-Murcko scaffold. Every
  acyclic molecule has the empty scaffold and every monosubstituted benzene the benzene one,
  so those groups each land in a single fold: on the demo's Tox21 split one fold held 65 %
  of a site's molecules (``benchmarks/README.md``).
- ``scaffold_skeleton`` (the default): the scaffold for ring systems of at least
  ``min_scaffold_rings`` rings, which rarely grow into such groups; for acyclic and single-ring
  molecules the *generic skeleton of the whole molecule* (every atom alike, every bond
  single, no charge or stereo). Near duplicates that differ only in
  element types, bond orders, charges or stereo (phenethylamine and phenethyl alcohol, an
  acid and its ester's chain isomer) share a skeleton and so a fold; molecules with another
  carbon framework or substitution pattern spread over the folds.
"""

from __future__ import annotations

import hashlib
import hmac

from rdkit import Chem
from rdkit.Chem import rdMolDescriptors
from rdkit.Chem.Scaffolds import MurckoScaffold

from fedchem.config import FoldConfig

__all__ = ["fold_key", "fold_of", "key_fingerprint", "scaffold_of", "skeleton_of"]


def scaffold_of(mol: Chem.Mol) -> str:
    """Canonical SMILES of the Bemis-Murcko scaffold ("" for acyclic molecules)."""
    core = MurckoScaffold.GetScaffoldForMol(mol)
    return Chem.MolToSmiles(core) if core is not None else ""


def skeleton_of(mol: Chem.Mol) -> str:
    """Canonical SMILES of the molecule's generic skeleton: every atom the same (a dummy atom,
    so that no valence rule applies), no charge, isotope, hydrogen or stereo, every bond
    single. ``MakeScaffoldGeneric`` does the same with carbons and fails on hypervalent atoms
    (a sulfone's sulfur would be a five-valent carbon)."""
    generic = Chem.RWMol(mol)
    for atom in generic.GetAtoms():
        atom.SetAtomicNum(0)
        atom.SetFormalCharge(0)
        atom.SetIsotope(0)
        atom.SetIsAromatic(False)
        atom.SetNoImplicit(True)
        atom.SetNumExplicitHs(0)
        atom.SetChiralTag(Chem.ChiralType.CHI_UNSPECIFIED)
    for bond in generic.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
        bond.SetIsAromatic(False)
        bond.SetStereo(Chem.BondStereo.STEREONONE)
    return Chem.MolToSmiles(generic, isomericSmiles=False)


def fold_key(mol: Chem.Mol, cfg: FoldConfig) -> str:
    """The string a molecule's fold is the keyed hash of (see the module docstring)."""
    scaffold = scaffold_of(mol)
    if cfg.method == "scaffold":
        return scaffold
    if scaffold:
        core = Chem.MolFromSmiles(scaffold)
        if core is not None and rdMolDescriptors.CalcNumRings(core) >= cfg.min_scaffold_rings:
            return f"scaffold:{scaffold}"
    return f"skeleton:{skeleton_of(mol)}"


def fold_of(key_string: str, key: bytes, n_folds: int = 5) -> int:
    """Fold index in ``[0, n_folds)`` of a fold key under the consortium key."""
    if not key:
        raise ValueError("the consortium key must not be empty")
    digest = hmac.new(key, key_string.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % n_folds


def key_fingerprint(key: bytes) -> str:
    """A short public fingerprint of the key, for consistency checks (never the key itself)."""
    return hashlib.sha256(b"fedchem-key-fingerprint:" + key).hexdigest()[:16]
