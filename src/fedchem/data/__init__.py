"""Site data: from validated measurements to a training-ready ``SiteDataset``.

Import the submodules directly (``fedchem.data.dataset``, ``.prepare``, ``.tasks``): a site's
training round loads only what it needs, not the preparation stack (RDKit, Dask, pandas).
"""
