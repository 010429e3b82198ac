"""The hub store: any fsspec URL (a local directory by default, ``s3://`` through s3fs)."""

from fedchem.storage.hub import HubLayout, HubStore

__all__ = ["HubLayout", "HubStore"]
