"""Who may read and write what on an S3 hub: IAM policies per party, enforced by the server.

Each site's credentials may write only under its own names (its replies, its local-only model,
its calibration, its preparation report, its ledger, its private area) and read only what the
coordinator publishes (openings, committed global models, the domain, its ledger, the
registry), the local-only models sites chose to share, and its own objects. The coordinator's
may write only what it publishes and read the run and the sites' published objects, never a
site's private area (``private/<site>/``). Every party may list the bucket (names, no
content): S3 answers a read of a missing key with 403 instead of 404 without it, and the
rounds poll for keys that do not exist yet.

IAM resource wildcards match across ``/``: the names below are chosen so that no pattern one
party holds matches another's objects (a site's reply is ``update.json``, the coordinator's
commit ``manifest.json``). :func:`provision` creates the users, policies and access keys
through the IAM API (boto3); the stack's S3 server (moto) enforces them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Credentials",
    "coordinator_policy",
    "example_policies",
    "operator_policy",
    "provision",
    "site_policy",
]

COORDINATOR_PARTY = "coordinator"
OPERATOR_PARTY = "operator"


def _arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _doc(bucket: str, read: list[str], write: list[str]) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"},
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [_arn(bucket, k) for k in read],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [_arn(bucket, k) for k in write],
            },
        ],
    }


def site_policy(bucket: str, hub: str, registry: str, site: str) -> dict[str, Any]:
    """``hub``, ``registry``: the key prefixes of the hub and the coordinator's registry."""
    own = [
        f"{hub}/runs/*/rounds/*/sites/{site}/*",
        f"{hub}/runs/*/baselines/{site}/*",
        f"{hub}/runs/*/calibration/{site}.json",
        f"{hub}/sites/{site}/*",
        f"{hub}/ledger/*/{site}/*",
        f"{hub}/private/{site}/*",
    ]
    published = [
        f"{hub}/runs/*/rounds/*/open.json",
        f"{hub}/runs/*/rounds/*/secagg/*",
        f"{hub}/runs/*/rounds/*/manifest.json",
        f"{hub}/runs/*/rounds/*/global.npz",
        f"{hub}/runs/*/domain/*",
        f"{hub}/runs/*/best.json",
        f"{hub}/runs/*/baselines/*",  # shared by their owners' policies (the cross-site matrix)
        f"{hub}/ledger/*/{COORDINATOR_PARTY}/*",
        f"{registry}/*",
    ]
    return _doc(bucket, own + published, own)


def coordinator_policy(bucket: str, hub: str, registry: str) -> dict[str, Any]:
    publishes = [
        f"{hub}/runs/*/rounds/*/open.json",
        f"{hub}/runs/*/rounds/*/secagg/*",
        f"{hub}/runs/*/rounds/*/manifest.json",
        f"{hub}/runs/*/rounds/*/global.npz",
        f"{hub}/runs/*/rounds/*/server_state.npz",
        f"{hub}/runs/*/domain/*",
        f"{hub}/runs/*/best.json",
        f"{hub}/ledger/*/{COORDINATOR_PARTY}/*",
        f"{registry}/*",
    ]
    reads = [f"{hub}/runs/*", f"{hub}/sites/*", f"{hub}/ledger/*", f"{registry}/*"]
    return _doc(bucket, reads, publishes)


def operator_policy(bucket: str) -> dict[str, Any]:
    """The stack's operator (set-up, tests, audits): the whole bucket."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:*"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def provision(
    iam: Any, bucket: str, hub: str, registry: str, sites: list[str]
) -> dict[str, Credentials]:
    """An IAM user, inline policy and access key per party (every site, the coordinator, the
    operator) through ``iam`` (a boto3 IAM client); party → its credentials."""
    import json

    policies = {s: site_policy(bucket, hub, registry, s) for s in sites}
    policies[COORDINATOR_PARTY] = coordinator_policy(bucket, hub, registry)
    policies[OPERATOR_PARTY] = operator_policy(bucket)
    out = {}
    for party, doc in policies.items():
        user = f"fedchem-{party}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="fedchem-hub", PolicyDocument=json.dumps(doc))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        out[party] = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
    return out


def example_policies(sites: tuple[str, ...] = ("site-a", "site-b")) -> dict[str, Any]:
    """The shipped example (``deployments/hub-iam-policies.json``): each party's IAM policy
    for bucket ``fedchem-hub``, hub under ``hub/``, registry under ``registry/``."""
    out = {s: site_policy("fedchem-hub", "hub", "registry", s) for s in sites}
    out[COORDINATOR_PARTY] = coordinator_policy("fedchem-hub", "hub", "registry")
    return out


if __name__ == "__main__":  # python -m fedchem.trust.hub_access: rewrite the shipped example
    import json
    from importlib import resources

    path = Path(str(resources.files("fedchem.deployments").joinpath("hub-iam-policies.json")))
    path.write_text(json.dumps(example_policies(), indent=2) + "\n")
