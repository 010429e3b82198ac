"""`fedchem prepare` from a site YAML, config errors that say where, a site worker's own config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedchem.cli import main
from fedchem.config import ConfigFileError, site_from_env
from tests.conftest import ASSAYS_CSV, MEASUREMENT_HEADER

SMILES = ["CCO", "CCN", "c1ccccc1O", "CC(=O)O", "c1ccncc1", "CCCCCl"]
ROWS = [f"c{i},{s},tox1,{i % 2},=,\nc{i},{s},sol1,{i / 10},=,log" for i, s in enumerate(SMILES)]


def _site_dir(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "measurements.csv").write_text(MEASUREMENT_HEADER + "\n".join(ROWS) + "\n")
    (tmp_path / "assays.csv").write_text(ASSAYS_CSV)
    (tmp_path / "consortium.key").write_bytes(b"k")
    cfg = tmp_path / "site.yaml"
    cfg.write_text(
        "site: {name: site-x, measurements: measurements.csv, assays: assays.csv,\n"
        "       workdir: work, key_file: consortium.key, dask_workers: 1}\n"
        "chem: {fp_size: 256}\n" + extra
    )
    return cfg


def test_prepare_from_a_yaml_with_relative_paths_and_derived_tasks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    cfg = _site_dir(tmp_path)
    monkeypatch.chdir(tmp_path.parent)  # paths resolve against the YAML, not the shell
    assert main(["prepare", "--config", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["rows_in"] == report["rows_accepted"] == 12 and not report["cache_hit"]
    # no `tasks:` → one task per assay of the site's table (tox1, pot1, sol1)
    assert set(report["labels_per_task"]) == {"tox1", "pot1", "sol1"}
    assert report["labels_per_task"]["tox1"] == 6 and report["labels_per_task"]["pot1"] == 0
    assert (tmp_path / "work" / "prepared").is_dir()
    assert main(["prepare", "--config", str(cfg), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["cache_hit"]


def test_a_bad_key_in_the_config_is_named_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    cfg = _site_dir(tmp_path, extra="")
    cfg.write_text(cfg.read_text().replace("chem: {fp_size: 256}", "chem: {fp_sise: 256}"))
    assert main(["prepare", "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "chem.fp_sise" in err and "Extra inputs are not permitted" in err
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert main(["prepare", "--config", str(tmp_path / "list.yaml")]) == 2
    assert "expected a YAML mapping" in capsys.readouterr().err


def test_a_site_worker_serves_only_its_own_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = _site_dir(tmp_path)
    monkeypatch.delenv("FEDCHEM_SITE_CONFIG", raising=False)
    with pytest.raises(ConfigFileError, match="FEDCHEM_SITE_CONFIG is not set"):
        site_from_env("site-x")
    monkeypatch.setenv("FEDCHEM_SITE_CONFIG", str(cfg))
    assert site_from_env("site-x").measurements == tmp_path / "measurements.csv"
    with pytest.raises(ConfigFileError, match="serves site 'site-x', not 'site-y'"):
        site_from_env("site-y")


def test_demo_settings_come_from_the_yaml_then_the_flags(tmp_path: Path):
    from fedchem.cli import build_parser, demo_config

    cfg = tmp_path / "demo.yaml"
    cfg.write_text(
        "dataset: data/wide.csv\nsites: 3\nheads: private\ntask_split: disjoint\n"
        "strategy: {name: fedprox, mu: 0.1}\ntrain: {lr_schedule: cosine}\n"
    )
    args = build_parser().parse_args(["demo", "--config", str(cfg), "--rounds", "4"])
    demo = demo_config(args)
    assert demo.dataset == str(tmp_path / "data" / "wide.csv")  # relative to the YAML
    assert (demo.sites, demo.rounds, demo.heads, demo.task_split) == (3, 4, "private", "disjoint")
    assert demo.strategy.name == "fedprox" and demo.strategy.mu == 0.1
    assert demo.train.lr_schedule == "cosine" and demo.train.seed == demo.seed == 0
    args = build_parser().parse_args(["demo", "--config", str(cfg), "--strategy", "median"])
    assert demo_config(args).strategy.name == "median"  # a flag replaces the file's choice
    # every setting has its flag, nested ones dotted; the common ones have short forms too
    args = build_parser().parse_args(
        [
            "demo",
            "--local-epochs",
            "2",
            "--chem.standardize.tautomer",
            "--no-train.bf16",
            "--strategy.name",
            "fedprox",
            "--strategy.mu",
            "0.5",
            "--fp-size",
            "1024",
        ]
    )
    flags = demo_config(args)
    assert (flags.train.local_epochs, flags.chem.fp_size, flags.strategy.mu) == (2, 1024, 0.5)
    assert flags.chem.standardize.tautomer and not flags.train.bf16
    # a strategy by name and parameters of a strategy: ambiguous, refused with what to do
    both = build_parser().parse_args(["demo", "--strategy", "fedprox", "--strategy.mu", "0.5"])
    with pytest.raises(ConfigFileError, match=r"--strategy\.name NAME"):
        demo_config(both)
    # the defaults are the bundled Tox21 demo
    plain = demo_config(build_parser().parse_args(["demo"]))
    assert (plain.dataset, plain.sites, plain.rounds, plain.strategy.name) == (
        "tox21",
        4,
        10,
        "fedavgm",
    )


def test_a_bad_demo_config_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("sites: 3\ntrain: {lr_schedule: exponential}\n")
    assert main(["demo", "--config", str(cfg)]) == 2
    assert "train.lr_schedule" in capsys.readouterr().err
    cfg.write_text("sites: 3\ntrain: {select: best}\n")  # model selection: last or best_valid
    assert main(["demo", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.select" in err and "best_valid" in err
    assert main(["demo", "--dataset", str(tmp_path / "missing.csv")]) == 2
    assert "not a bundled name" in capsys.readouterr().err


def test_a_federation_config_is_checked_with_errors_that_say_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    cfg = tmp_path / "federation.yaml"
    cfg.write_text(
        "run_id: weekly\nhub_url: s3://hub/fed\nmode: deployed\n"
        "sites: [{name: site-a}, {name: site-b}, {name: site-c}]\n"
        "tasks: [{name: herg, kind: classification}]\n"
        "deployment: {min_sites: 2, round_deadline_s: 600}\n"
        "strategy: {name: trimmed_mean, trim_fraction: 0.2}\n"
    )
    assert main(["federate", "--config", str(cfg), "--check"]) == 0
    out = capsys.readouterr().out
    assert "3 sites" in out and "quorum 2 (tolerate)" in out and "trimmed_mean" in out
    cfg.write_text(cfg.read_text().replace("trim_fraction: 0.2", "trim_fraction: 0.7"))
    assert main(["federate", "--config", str(cfg), "--check"]) == 2
    assert "strategy.trimmed_mean.trim_fraction" in capsys.readouterr().err
    cfg.write_text(
        cfg.read_text()
        .replace("trim_fraction: 0.7", "trim_fraction: 0.2")
        .replace("min_sites: 2", "min_sites: 4")
    )
    assert main(["federate", "--config", str(cfg), "--check"]) == 2
    assert "min_sites=4 exceeds the 3 sites" in capsys.readouterr().err


def test_a_relative_local_hub_is_relative_to_the_yaml(tmp_path: Path):
    from fedchem.config import load_federation_config

    cfg = tmp_path / "federation.yaml"
    body = "run_id: r\nmode: deployed\nsites: [{name: a}]\ntasks: [{name: t, kind: regression}]\n"
    cfg.write_text(body + "hub_url: hub\n")
    assert load_federation_config(cfg).hub_url == str(tmp_path / "hub")
    cfg.write_text(body + "hub_url: s3://bucket/hub\n")
    assert load_federation_config(cfg).hub_url == "s3://bucket/hub"


def test_base_model_needs_the_consortium_key_and_a_valid_config(tmp_path, capsys):
    args = ["base-model", "--registry", str(tmp_path / "reg")]
    assert main([*args, "--key-file", str(tmp_path / "missing.key")]) == 2
    assert "no such file" in capsys.readouterr().err
    key = tmp_path / "k.key"
    key.write_bytes(b"k" * 32)
    bad = tmp_path / "bm.yaml"
    bad.write_text("base_model: {epochs: 0}\n")
    assert main([*args, "--key-file", str(key), "--config", str(bad)]) == 2
    assert "epochs" in capsys.readouterr().err
    assert not (tmp_path / "reg").exists()  # nothing trained, nothing registered
