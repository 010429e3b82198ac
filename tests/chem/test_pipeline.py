"""Configurable standardization, the featurizer registry, keyed columns and the shard cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem

from fedchem.chem.batch import featurize_many
from fedchem.chem.cache import featurize_to_shards, load_shards
from fedchem.chem.featurize import featurize_partition
from fedchem.chem.fingerprints import (
    column_permutation,
    featurizer_names,
    get_featurizer,
    morgan_bits,
    register_featurizer,
)
from fedchem.chem.standardize import standardize_smiles
from fedchem.config import ChemConfig, StandardizeConfig
from fedchem.demo.sites import bundled_dataset


def _std(raw: str, **kw: object) -> str | None:
    return standardize_smiles(raw, cfg=StandardizeConfig(**kw)).smiles  # type: ignore[arg-type]


def test_each_standardization_step_can_be_switched():
    assert _std("C[C@H](N)C(=O)O") == "C[C@H](N)C(=O)O"
    assert _std("C[C@H](N)C(=O)O", remove_stereo=True) == "CC(N)C(=O)O"
    assert _std("[13CH3]CO") == "CCO"
    assert _std("[13CH3]CO", remove_isotopes=False) == "[13CH3]CO"
    assert _std("[Na+].[O-]C(=O)c1ccccc1") == "O=C(O)c1ccccc1"
    assert _std("[Na+].[O-]C(=O)c1ccccc1", charge_parent=False) == "O=C([O-])c1ccccc1.[Na+]"
    # metal disconnector: a covalent sodium salt becomes the acid's parent
    assert _std("[Na]OC(=O)c1ccccc1") == "O=C(O)c1ccccc1"
    # normalizer: a charge-separated nitro group and its uncharged form agree
    assert _std("C[N+](=O)[O-]") == _std("CN(=O)=O")
    # tautomers: 2-hydroxypyridine and 2-pyridone meet only with the tautomer step
    assert _std("Oc1ccccn1") != _std("O=c1cccc[nH]1")
    assert _std("Oc1ccccn1", tautomer=True) == _std("O=c1cccc[nH]1", tautomer=True)


def test_featurizer_registry_by_name_and_by_import_path():
    assert {"morgan", "morgan_counts", "fcfp", "atom_pair"} <= set(featurizer_names())
    mol = Chem.MolFromSmiles("CCCCCCO")
    bits, none = get_featurizer("morgan")(mol, 3, 2048)
    assert none is None and bits.tolist() == morgan_bits(mol, 3, 2048).tolist()
    idx, counts = get_featurizer("morgan_counts")(mol, 3, 2048)
    assert counts is not None and counts.max() > 1 and set(idx.tolist()) == set(bits.tolist())
    assert get_featurizer("fedchem.chem.fingerprints:morgan_bits") is morgan_bits
    with pytest.raises(ValueError, match="unknown featurizer 'ecfp9'"):
        get_featurizer("ecfp9")
    with pytest.raises(ValueError, match="cannot be imported"):
        get_featurizer("no_such_module:fn")


def test_a_new_featurizer_is_one_decorator():
    @register_featurizer("test_heavy_atoms")
    def heavy(mol: Chem.Mol, radius: int, fp_size: int):  # type: ignore[no-untyped-def]
        return np.array([mol.GetNumHeavyAtoms() % fp_size]), None

    chem = ChemConfig(featurizer="test_heavy_atoms", fp_size=64, permute_columns=False)
    out = featurize_partition(["CCO", "CCCC"], chem, b"k")
    assert out.indices.tolist() == [3, 4]
    with pytest.raises(ValueError, match="already registered"):
        register_featurizer("morgan")(heavy)


def test_keyed_column_permutation_is_a_bijection_that_depends_on_the_key():
    p1, p2 = column_permutation(b"key-1", 1024), column_permutation(b"key-2", 1024)
    assert sorted(p1.tolist()) == list(range(1024))
    assert not np.array_equal(p1, p2)
    plain = featurize_partition(
        ["c1ccccc1O"], ChemConfig(fp_size=1024, permute_columns=False), b"key-1"
    )
    keyed = featurize_partition(["c1ccccc1O"], ChemConfig(fp_size=1024), b"key-1")
    assert keyed.indices.tolist() == sorted(p1[plain.indices].tolist())
    assert keyed.indices.tolist() != plain.indices.tolist()


def test_per_molecule_output_does_not_depend_on_the_batch():
    chem = ChemConfig(fp_size=1024)
    alone = featurize_partition(["CC(=O)Nc1ccc(O)cc1"], chem, b"k")
    batch = featurize_partition(["c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "[Na+].[Cl-]"], chem, b"k")
    assert alone.canonical[0] == batch.canonical[1]
    assert alone.fold[0] == batch.fold[1]
    assert alone.indices.tolist() == batch.indices[batch.indptr[1] : batch.indptr[2]].tolist()


@pytest.mark.parametrize("featurizer", ["atom_pair", "test_counts_for_rings_only"])
def test_a_partition_holds_each_molecule_as_featurized_alone(featurizer: str):
    """The partition's column and value buffers grow past their first size (atom pairs set
    ~100 bits per molecule) and take count values after bit-only rows (filled with 1.0)."""
    if featurizer not in featurizer_names():

        @register_featurizer(featurizer)
        def rings_counted(mol: Chem.Mol, radius: int, fp_size: int):  # type: ignore[no-untyped-def]
            bits = morgan_bits(mol, radius, fp_size)
            rings = mol.GetRingInfo().NumRings()
            return bits, (np.full(bits.size, rings + 1.0, np.float32) if rings else None)

    chem = ChemConfig(featurizer=featurizer, fp_size=2048)
    smiles = ["CCO", "", "CCCCCCCCCC(=O)O", *pd.read_csv(bundled_dataset())["smiles"].head(60)]
    batch = featurize_partition(smiles, chem, b"k")
    assert batch.indptr[-1] > 64 * len(smiles) or featurizer != "atom_pair"
    for i, raw in enumerate(smiles):
        alone = featurize_partition([raw], chem, b"k")
        row = slice(batch.indptr[i], batch.indptr[i + 1])
        assert batch.indices[row].tolist() == alone.indices.tolist(), raw
        assert (batch.canonical[i], batch.fold[i]) == (alone.canonical[0], alone.fold[0])
        if featurizer != "atom_pair":
            assert batch.values is not None
            want = alone.values if alone.values is not None else np.ones(alone.indices.size)
            assert batch.values[row].tolist() == want.tolist(), raw
    assert (batch.values is None) == (featurizer == "atom_pair")


def test_shard_cache_recomputes_only_touched_partitions(tmp_path: Path):
    raw = [*pd.read_csv(bundled_dataset())["smiles"].head(1200).tolist(), "C1CC", ""]
    uniq = np.unique(np.array(raw, dtype=object))
    chem = ChemConfig(fp_size=1024)
    seen: list[tuple[int, int]] = []
    first = featurize_to_shards(
        uniq,
        chem,
        b"k",
        tmp_path,
        partition_rows=200,
        n_workers=1,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert first.computed_shards == len(first.shards) == 7 and first.n_rows == len(uniq)
    assert first.computed_molecules == len(uniq)
    assert seen[-1] == (7, 7)
    again = featurize_to_shards(uniq, chem, b"k", tmp_path, partition_rows=200, n_workers=1)
    assert again.computed_shards == 0 and again.computed_molecules == 0
    # one molecule removed, one added: only the new molecule is computed
    edited = np.unique(np.array([*raw[:10], *raw[11:], "CCCCCCCCCCN"], dtype=object))[::-1]
    third = featurize_to_shards(edited, chem, b"k", tmp_path, partition_rows=200, n_workers=1)
    assert third.computed_shards == 1 and third.computed_molecules == 1
    feats = load_shards(third)
    direct = featurize_partition(list(edited), chem, b"k")
    assert feats.canonical == direct.canonical and feats.reason == direct.reason
    assert np.array_equal(feats.indices, direct.indices) and np.array_equal(feats.fold, direct.fold)
    # another key or config is another cache entry, never a stale hit
    other = featurize_to_shards(uniq, chem, b"other", tmp_path, partition_rows=200, n_workers=1)
    assert other.computed_molecules == len(uniq)
    # a lost index is rebuilt from the shards themselves
    for index_file in tmp_path.glob("*/index.npz"):
        index_file.unlink()
    rebuilt = featurize_to_shards(edited, chem, b"k", tmp_path, partition_rows=200, n_workers=1)
    assert rebuilt.computed_molecules == 0
    assert load_shards(rebuilt).canonical == direct.canonical


def test_featurize_many_through_the_cache_keeps_input_order_and_repeats(tmp_path: Path):
    smiles = ["CCO", "bad(", "CCO", "c1ccccc1", None]
    out = featurize_many(smiles, ChemConfig(fp_size=512), b"k", n_workers=1, cache_dir=tmp_path)
    assert out.canonical == ["CCO", None, "CCO", "c1ccccc1", None]
    assert out.reason[1] == "unparsable SMILES" and out.reason[4] == "empty SMILES"
    assert (
        out.indices[out.indptr[0] : out.indptr[1]].tolist()
        == out.indices[out.indptr[2] : out.indptr[3]].tolist()
    )


@pytest.mark.slow
def test_an_existing_dask_scheduler_by_address_gives_the_same_result(tmp_path: Path):
    from distributed import LocalCluster

    smiles = pd.read_csv(bundled_dataset())["smiles"].head(300).tolist()
    chem = ChemConfig(fp_size=512)
    local = featurize_many(smiles, chem, b"k", n_workers=1)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        seen: list[tuple[int, int]] = []
        remote = featurize_many(
            smiles,
            chem,
            b"k",
            partition_rows=100,
            cache_dir=tmp_path,
            dask_address=cluster.scheduler_address,
            progress=lambda d, t: seen.append((d, t)),
        )
    assert remote.canonical == local.canonical and remote.reason == local.reason
    assert np.array_equal(remote.indices, local.indices) and np.array_equal(remote.fold, local.fold)
    assert seen[-1][0] == seen[-1][1] >= 3
