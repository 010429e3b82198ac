"""Structure standardization, one molecule at a time (context-free by construction).

The steps follow MELLODDY-TUNER, in order, each switchable in :class:`StandardizeConfig`:
parse; metal disconnector; normalizer; reionizer; charge parent (largest organic fragment,
neutralized); isotopes removed; stereo removed (off by default); tautomer canonicalization
(off by default, bounded by ``max_tautomers``); a parent without any carbon atom (an inorganic
salt alone) is refused; heavy-atom limit; canonical SMILES round trip.
A failure is returned as a reason, never raised, so the batch layer can quarantine the row.
The RDKit standardizer objects are built once per process and configuration.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from rdkit import Chem, RDLogger
from rdkit.Chem.MolStandardize import rdMolStandardize

from fedchem.config import StandardizeConfig

__all__ = ["StandardizeResult", "Standardizer", "standardize_mol", "standardize_smiles"]

RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]


class StandardizeResult(NamedTuple):
    """Outcome for one input SMILES: exactly one of ``smiles`` and ``reason`` is set."""

    smiles: str | None
    """canonical SMILES of the standardized parent"""
    reason: str | None
    """why the molecule was rejected"""


class Standardizer:
    """The configured steps, with RDKit's standardizer objects built once."""

    def __init__(self, cfg: StandardizeConfig):
        self.cfg = cfg
        self._metal = rdMolStandardize.MetalDisconnector()
        self._normalizer = rdMolStandardize.Normalizer()
        self._reionizer = rdMolStandardize.Reionizer()
        self._fragment = rdMolStandardize.LargestFragmentChooser(preferOrganic=True)
        self._uncharger = rdMolStandardize.Uncharger(canonicalOrder=True)
        params = rdMolStandardize.CleanupParameters()
        params.maxTautomers = cfg.max_tautomers  # type: ignore[assignment]
        params.maxTransforms = cfg.max_tautomers * 4  # type: ignore[assignment]
        self._tautomers = rdMolStandardize.TautomerEnumerator(params)

    def mol(self, mol: Chem.Mol) -> Chem.Mol | str:
        """Standardize a parsed molecule; return the parent molecule or a rejection reason."""
        cfg = self.cfg
        try:
            if cfg.metal_disconnect and _has_metal(mol):
                mol = self._metal.Disconnect(mol)
            if cfg.normalize:
                mol = self._normalizer.normalize(mol)
            if cfg.reionize and _has_charge(mol):
                mol = self._reionizer.reionize(mol)
            if cfg.charge_parent:
                if len(Chem.GetMolFrags(mol)) > 1:
                    mol = self._fragment.choose(mol)
                if _has_charge(mol):
                    mol = self._uncharger.uncharge(mol)
            if cfg.remove_isotopes:
                mol = rdMolStandardize.IsotopeParent(mol, skipStandardize=True)
            if cfg.remove_stereo:
                mol = Chem.Mol(mol)
                Chem.RemoveStereochemistry(mol)
            if cfg.tautomer:
                mol = self._tautomers.Canonicalize(mol)
        except Exception as exc:  # RDKit raises many types for exotic inputs
            return f"standardization failed: {type(exc).__name__}"
        if mol is None or mol.GetNumAtoms() == 0:
            return "no organic parent fragment"
        if not mol.HasSubstructMatch(_CARBON_QUERY):
            return "no organic part: the structure has no carbon atom (an inorganic salt?)"
        n_heavy = mol.GetNumHeavyAtoms()
        if n_heavy >= cfg.max_heavy_atoms:
            return f"too many heavy atoms ({n_heavy} >= {cfg.max_heavy_atoms})"
        return mol

    def smiles(self, smiles: str | None) -> tuple[StandardizeResult, Chem.Mol | None]:
        """Parse, standardize and round-trip one SMILES; the re-parsed parent comes with it."""
        text = "" if smiles is None else str(smiles).strip()
        if not text:
            return StandardizeResult(None, "empty SMILES"), None
        mol = Chem.MolFromSmiles(text)
        if mol is None:
            return StandardizeResult(None, "unparsable SMILES"), None
        parent = self.mol(mol)
        if isinstance(parent, str):
            return StandardizeResult(None, parent), None
        canonical = Chem.MolToSmiles(parent)
        # round trip: the canonical form must parse back, else downstream steps would disagree
        reparsed = Chem.MolFromSmiles(canonical)
        if reparsed is None:
            return StandardizeResult(None, "canonical SMILES does not round-trip"), None
        return StandardizeResult(canonical, None), reparsed


# pre-checks as compiled queries (a Python loop over atoms costs ~20x more): a step that
# would change nothing is skipped, never one that would. The metal query is a superset: any
# element outside H, B, C, N, O, F, Si, P, S, Cl, Se, Br, I.
_METAL_QUERY = Chem.MolFromSmarts("[!#1;!#5;!#6;!#7;!#8;!#9;!#14;!#15;!#16;!#17;!#34;!#35;!#53]")
_CHARGE_QUERY = Chem.MolFromSmarts("[!+0]")
_CARBON_QUERY = Chem.MolFromSmarts("[#6]")


def _has_metal(mol: Chem.Mol) -> bool:
    return bool(mol.HasSubstructMatch(_METAL_QUERY))


def _has_charge(mol: Chem.Mol) -> bool:
    return bool(mol.HasSubstructMatch(_CHARGE_QUERY))


@lru_cache(maxsize=8)
def standardizer_for(cfg: StandardizeConfig) -> Standardizer:
    """One :class:`Standardizer` per process and configuration."""
    return Standardizer(cfg)


def standardize_mol(mol: Chem.Mol, max_heavy_atoms: int = 100) -> Chem.Mol | str:
    """Default steps on a parsed molecule; the parent or a rejection reason."""
    return standardizer_for(StandardizeConfig(max_heavy_atoms=max_heavy_atoms)).mol(mol)


def standardize_smiles(
    smiles: str | None, max_heavy_atoms: int = 100, cfg: StandardizeConfig | None = None
) -> StandardizeResult:
    """Parse and standardize one SMILES string into a canonical parent SMILES."""
    cfg = cfg or StandardizeConfig(max_heavy_atoms=max_heavy_atoms)
    return standardizer_for(cfg).smiles(smiles)[0]
