"""Federation: manifests, aggregation math, the site's round and the coordinator's round."""

from fedchem.federation.aggregate import aggregate_weighted
from fedchem.federation.manifest import RoundManifest, SiteUpdateManifest

__all__ = ["RoundManifest", "SiteUpdateManifest", "aggregate_weighted"]
