"""Chemistry: per-molecule pure functions (standardize, fingerprint, fold) and one batch layer."""

from fedchem.chem.fingerprints import morgan_bits
from fedchem.chem.folds import fold_of, scaffold_of
from fedchem.chem.standardize import StandardizeResult, standardize_smiles

__all__ = [
    "StandardizeResult",
    "fold_of",
    "morgan_bits",
    "scaffold_of",
    "standardize_smiles",
]
