"""The simulated federation of the main job: site files from a public set, baselines, report."""

from fedchem.demo.sites import DemoSplit, bundled_dataset, split_into_sites

__all__ = ["DemoSplit", "bundled_dataset", "split_into_sites"]
