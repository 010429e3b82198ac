"""The ledger as its writer appends to it: each append reads only what it does not hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedchem.storage.hub import HubStore
from fedchem.trust.keys import new_key_pair
from fedchem.trust.ledger import Ledger, read_chain
from fedchem.trust.signing import COORDINATOR, Signer


class CountingHub(HubStore):
    gets = 0

    def get_json(self, rel: str) -> Any:
        CountingHub.gets += 1
        return super().get_json(rel)


def test_appends_read_only_new_entries_and_notice_a_chain_they_did_not_write(tmp_path: Path):
    signer = Signer.from_file(COORDINATOR, new_key_pair(tmp_path, "c").private_path)
    hub = CountingHub(str(tmp_path / "hub"))
    for i in range(30):  # a new Ledger per decision, as the coordinator's tasks make them
        Ledger(hub, "run", signer).append("decision", round=i, data=str(i).encode())
    chain = read_chain(hub, "run", COORDINATOR)
    assert [e.seq for e in chain] == list(range(30))
    assert all(e.prev_sha256 for e in chain[1:])
    assert CountingHub.gets <= 30 + 30  # not the 435 of re-reading the chain every time
    # an entry another process appended (a resumed coordinator) is picked up, not overwritten
    script = (
        "import sys; from fedchem.storage.hub import HubStore; "
        "from fedchem.trust.ledger import Ledger; from fedchem.trust.signing import Signer; "
        "s = Signer.from_file('coordinator', sys.argv[2]); "
        "print(Ledger(HubStore(sys.argv[1]), 'run', s).append('elsewhere', round=99).seq)"
    )
    key = str(tmp_path / "c.key")
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "hub"), key],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == "30"
    assert Ledger(hub, "run", signer).append("next", round=100).seq == 31
    # a chain removed and started again under the same name is read again, not assumed
    shutil.rmtree(tmp_path / "hub" / "ledger")
    assert Ledger(hub, "run", signer).append("fresh", round=0).seq == 0
