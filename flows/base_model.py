"""The public base model: trained on a bundled public set with the consortium's featurizer,
registered with its card, for federations to start from (``init_from`` with ``parts: trunk``).

Run it where the consortium key is (a site's operator): the base must read the same keyed
fingerprint bits as the sites' models. No site's data is read.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from fedchem.config import ChemConfig
from fedchem.demo.base_model import BaseModelConfig
from fedchem.tasks.registry import publish_public_base_model


@flow(name="public-base-model", flow_run_name="public-base/{config.dataset}")
def public_base_model(
    config: BaseModelConfig, chem: ChemConfig, key_file: Path, workdir: Path, registry: str
) -> dict[str, object]:
    return publish_public_base_model(config, chem, key_file, workdir, registry)
