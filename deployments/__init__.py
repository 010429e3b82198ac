"""How fedchem is deployed: the Prefect deployment template, the S3 bucket policy, a UI check."""
