"""Site data: from validated measurements to a training-ready ``SiteDataset``."""

from fedchem.data.dataset import SiteDataset
from fedchem.data.tasks import TaskTable, build_tasks

__all__ = ["SiteDataset", "TaskTable", "build_tasks"]
