"""fedchem: federated multitask modelling of private assay data.

The library is free of orchestration: everything here is plain Python, tested without Prefect.
``tasks/`` and ``flows/`` at the repository root wrap it for Prefect.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
