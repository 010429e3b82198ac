from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem

from fedchem.chem import fold_of, scaffold_of, standardize_smiles
from fedchem.chem.batch import featurize_many
from fedchem.chem.featurize import featurize_partition
from fedchem.chem.fingerprints import morgan_bits_from_smiles
from fedchem.config import ChemConfig
from fedchem.demo.sites import bundled_dataset

# pinned ECFP6 (radius 3) bits folded to 2048: a change here changes every site's features
GOLDEN = {
    "CCO": [80, 222, 294, 807, 1057, 1410],
    "c1ccccc1O": [65, 389, 527, 745, 807, 1088, 1199, 1380, 1602, 1750, 1778, 1873, 1947],
    "CC(=O)Nc1ccc(O)cc1": [
        145,
        191,
        231,
        245,
        356,
        530,
        650,
        693,
        745,
        807,
        843,
        849,
        1017,
        1057,
        1077,
        1152,
        1313,
        1380,
        1602,
        1664,
        1750,
        1778,
        1816,
        1873,
        1917,
    ],
}


@pytest.mark.parametrize(("smiles", "bits"), GOLDEN.items())
def test_golden_morgan_bits(smiles: str, bits: list[int]):
    assert morgan_bits_from_smiles(smiles, radius=3, fp_size=2048).tolist() == bits


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("[Na+].[O-]C(=O)c1ccccc1", "O=C(O)c1ccccc1"),  # salt stripped, charge neutralized
        ("[13CH3]CO", "CCO"),  # isotope removed
        ("C[NH3+]", "CN"),  # charge parent
        ("OCC", "CCO"),  # canonical
    ],
)
def test_standardization(raw: str, expected: str):
    assert standardize_smiles(raw) == (expected, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("", "empty SMILES"), ("C1CC", "unparsable SMILES"), ("C" * 120, "too many heavy atoms")],
)
def test_standardization_rejects_with_reason(raw: str, reason: str):
    smiles, why = standardize_smiles(raw)
    assert smiles is None and why is not None and why.startswith(reason)


def test_same_scaffold_same_fold_and_key_matters():
    a, b = Chem.MolFromSmiles("Cc1ccccc1"), Chem.MolFromSmiles("Oc1ccccc1")
    assert scaffold_of(a) == scaffold_of(b) == "c1ccccc1"
    assert fold_of(scaffold_of(a), b"k1") == fold_of(scaffold_of(b), b"k1")
    scaffolds = [
        scaffold_of(Chem.MolFromSmiles(s))
        for s in [
            "c1ccccc1",
            "C1CCCCC1",
            "c1ccncc1",
            "c1ccc2ccccc2c1",
            "C1CCNCC1",
            "c1ccoc1",
            "c1ccsc1",
            "C1CC1",
            "c1cnccn1",
            "C1CCOC1",
        ]
    ]
    k1 = [fold_of(s, b"key-one", 5) for s in scaffolds]
    k2 = [fold_of(s, b"key-two", 5) for s in scaffolds]
    assert k1 == [fold_of(s, b"key-one", 5) for s in scaffolds]  # deterministic
    assert k1 != k2
    with pytest.raises(ValueError):
        fold_of("c1ccccc1", b"")


def test_featurize_in_worker_processes_equals_in_process():
    extra = pd.read_csv(bundled_dataset())["smiles"].head(400).tolist()
    smiles = ["CCO", "not-a-smiles", "c1ccccc1O", "", "[Na+].[Cl-]", "CC(=O)Nc1ccc(O)cc1", *extra]
    chem = ChemConfig(fp_size=2048, permute_columns=False)
    local = featurize_partition(smiles, chem, b"k")
    dist = featurize_many(smiles, chem, b"k", partition_rows=100, n_workers=2)
    assert dist.canonical == local.canonical and dist.reason == local.reason
    assert np.array_equal(dist.indptr, local.indptr) and np.array_equal(dist.indices, local.indices)
    assert dist.reason[1] == "unparsable SMILES" and dist.reason[3] == "empty SMILES"
    assert dist.canonical[4] == standardize_smiles("[Na+].[Cl-]").smiles  # same as one by one
    on = dist.indices[dist.indptr[0] : dist.indptr[1]]
    assert on.tolist() == GOLDEN["CCO"]
