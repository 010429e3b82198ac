"""Data contracts: ODCS YAML in, a row validator out, every failing row kept with its reason."""

from fedchem.contracts.compile import CompiledTable, compile_table
from fedchem.contracts.errors import (
    ContractError,
    ContractSchemaError,
    ContractViolation,
    MissingColumnError,
    UnsupportedContractFeature,
)
from fedchem.contracts.load import Contract, default_contracts_dir, load_contract
from fedchem.contracts.validate import RowAccount, ValidationResult, read_table, validate_frame

__all__ = [
    "CompiledTable",
    "Contract",
    "ContractError",
    "ContractSchemaError",
    "ContractViolation",
    "MissingColumnError",
    "RowAccount",
    "UnsupportedContractFeature",
    "ValidationResult",
    "compile_table",
    "default_contracts_dir",
    "load_contract",
    "read_table",
    "validate_frame",
]
