"""Errors of the contract layer; each message names the contract and what is wrong."""

from __future__ import annotations

__all__ = [
    "ContractError",
    "ContractSchemaError",
    "ContractViolation",
    "MissingColumnError",
    "UnsupportedContractFeature",
]


class ContractError(Exception):
    """Base class: the contract itself, or data as a whole, cannot be used."""


class ContractSchemaError(ContractError):
    """The YAML is not a valid ODCS document (checked against the ODCS JSON Schema)."""


class UnsupportedContractFeature(ContractError):
    """The contract uses a feature the compiler does not implement (never silently skipped)."""


class MissingColumnError(ContractError):
    """A column the contract declares is absent from the data file."""

    def __init__(self, column: str, contract: str, source: str) -> None:
        self.column = column
        self.contract = contract
        super().__init__(
            f"column {column!r} required by contract {contract} is missing from {source}"
        )


class ContractViolation(ContractError):
    """A table-level rule failed (e.g. a row count), or too many rows were quarantined."""
