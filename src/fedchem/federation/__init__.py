"""Federation: aggregation math, strategies, the site's round and the coordinator's round.

The messages that travel between sites and coordinator are in :mod:`fedchem.messages`.
"""
