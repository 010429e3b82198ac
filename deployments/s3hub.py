"""The stack's S3 server (moto, on loopback) as a hub with every party held to its own
objects: the bucket, an IAM user, policy and key per party (:mod:`fedchem.trust.hub_access`),
then authorization switched on. Needs ``boto3`` and ``moto[server]`` (the ``stack`` extra)."""

from __future__ import annotations

import urllib.request

from fedchem.trust.hub_access import Credentials, provision

__all__ = ["BUCKET", "HUB_PREFIX", "REGISTRY_PREFIX", "authorize_requests", "provision_hub"]

#: the set-up credentials of the loopback S3 server (accepted before its IAM authorization is
#: switched on; never a real account's): after set-up every party has its own
S3_KEY, S3_SECRET = "fedchem-local", "fedchem-local-secret"
#: the hub's bucket and the key prefixes of the hub and of the coordinator's registry
BUCKET, HUB_PREFIX, REGISTRY_PREFIX = "fedchem-hub", "hub", "registry"


def provision_hub(
    s3_endpoint: str, sites: list[str], bucket: str = BUCKET
) -> dict[str, Credentials]:
    """On the stack's S3 server (moto): the hub's bucket, an IAM user with its own policy and
    key for every party, then authorization switched on (:func:`authorize_requests`): from
    here on a site's credentials read and write only what
    :func:`~fedchem.trust.hub_access.site_policy` allows, the coordinator's only what
    :func:`~fedchem.trust.hub_access.coordinator_policy` does. Party -> its credentials."""
    import boto3  # the stack extra: the S3 server's set-up

    kw = {
        "endpoint_url": s3_endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": S3_KEY,
        "aws_secret_access_key": S3_SECRET,
    }
    boto3.client("s3", **kw).create_bucket(Bucket=bucket)
    creds = provision(boto3.client("iam", **kw), bucket, HUB_PREFIX, REGISTRY_PREFIX, sites)
    authorize_requests(s3_endpoint)
    return creds


def authorize_requests(s3_endpoint: str) -> None:
    """Switch the stack's S3 server (moto) to authorizing every request from the next one on,
    against the IAM users and policies it holds (moto's documented ``reset-auth``)."""
    req = urllib.request.Request(
        f"{s3_endpoint}/moto-api/reset-auth",
        data=b"0",  # no unauthenticated request left
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(req, timeout=30):
        pass
