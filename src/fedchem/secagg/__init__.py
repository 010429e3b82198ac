"""Secure aggregation: the coordinator learns the sum of the sites' updates, nothing else."""
