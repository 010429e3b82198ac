"""The model registry: named models, immutable versions, aliases, model cards (any fsspec URL)."""

from fedchem.registry.store import ModelRef, Registry, RegistryError, VersionExists

__all__ = ["ModelRef", "Registry", "RegistryError", "VersionExists"]
