"""Load an ODCS YAML contract: JSON Schema check first, then the pydantic model.

The ``open-data-contract-standard`` pydantic models ignore unknown nested keys, so a typo such
as ``requred: true`` would vanish silently; checking against the published JSON Schema first
turns it into an error that gives the key's path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from open_data_contract_standard.model import OpenDataContractStandard

from fedchem.config import read_yaml_mapping
from fedchem.contracts.errors import ContractSchemaError

__all__ = ["Contract", "default_contracts_dir", "load_contract"]


@dataclass(frozen=True)
class Contract:
    """A loaded contract: the typed model plus the raw mapping the compiler inspects."""

    model: OpenDataContractStandard
    raw: dict[str, Any]
    source: str

    @property
    def label(self) -> str:
        """``id`` and version, as error messages name a contract."""
        return f"'{self.model.id}' v{self.model.version} ({self.source})"


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    text = resources.files("open_data_contract_standard").joinpath("schema.json").read_text()
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def load_contract(path: Path | str) -> Contract:
    """Parse, schema-check and load one contract file."""
    path = Path(path)
    raw = read_yaml_mapping(path, ContractSchemaError)
    errors = sorted(_validator().iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"  at {'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in errors
        ]
        raise ContractSchemaError(
            f"{path}: not a valid ODCS contract ({len(errors)} problem(s)):\n" + "\n".join(lines)
        )
    return Contract(model=OpenDataContractStandard(**raw), raw=raw, source=str(path))


def default_contracts_dir() -> Path:
    """The contracts fedchem ships (``data_contracts/`` in the repository, package data of
    ``fedchem.data_contracts`` once installed)."""
    return Path(str(resources.files("fedchem.data_contracts")))
