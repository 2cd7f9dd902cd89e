"""``make demo`` as a newcomer runs it, without the waiting: ``python -m demo --no-wait``.

The demo runs as a subprocess on this session's broker and PostgreSQL server, with a
database and a vhost named like the session's own (so that a killed session's are
cleaned up by the next one), free ports, and its logs in the test's directory. It
must exit 0 with a report saying that every record is in the CRM and that the
company it edited in the CRM reached the BSS through a pull, and leave no process
behind.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from demo.thirdparty import REPO
from shared.storage.db import quote_ident
from tests.fixtures.amqp import RabbitServer
from tests.fixtures.database import DATABASE_PREFIX

pytestmark = pytest.mark.e2e

COUNT = 5
#: Accounts the demo renames and deletes after the first sync (demo/run.py).
UPDATES, DELETES = 3, 1


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose command line or environment holds ``text``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_demo_syncs_every_record_and_stops_everything(
        node_tools: None, rabbitmq: RabbitServer, _session_vhost: str,
        postgres_server_url: str, tmp_path: Path) -> None:
    database = f"{DATABASE_PREFIX}{int(time.time())}_{secrets.token_hex(3)}"
    vhost = f"{_session_vhost}.demo"
    env = {**os.environ, "AMQP_URL": rabbitmq.amqp_url, "DATABASE_URL": postgres_server_url,
           "MANAGEMENT_URL": rabbitmq.management_url}
    command = [sys.executable, "-m", "demo", "--no-wait", "--count", str(COUNT),
               "--database", database, "--vhost", vhost, "--bss-port", "0", "--crm-port", "0",
               "--workdir", str(tmp_path), "--timeout", "30", "--drop-at-exit"]
    started = time.monotonic()
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=150, check=False)
    finally:  # whatever happened to the demo's own clean-up
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)")
        management = rabbitmq.management()
        management.delete_vhost(vhost)
        management.close()
    output = result.stdout + result.stderr
    logs = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                     for log in sorted(tmp_path.glob("*.log")))
    assert result.returncode == 0, f"the demo exited with {result.returncode}:\n{output}\n{logs}"

    accounts = COUNT - DELETES
    total = accounts + 2 * COUNT
    assert (f"RESULT: all {total} BSS records are in the CRM ({total} CRM records; "
            f"{UPDATES} updates and {DELETES} delete synced too)") in output, output
    for entity, collection, count in (("account", "companies", accounts),
                                      ("contact", "people", COUNT), ("case", "tickets", COUNT)):
        row = rf"^\s+{entity}\s+{count}\s+{count} {collection}\s+{count}/{count}\s+ok$"
        assert re.search(row, output, re.MULTILINE), f"no line matching {row!r}:\n{output}"
    audit = output.split("== The audit log", 1)[1].split("== One record", 1)[0]
    assert re.search(r"pusher\s+acme-telecom\s+acme-crm-prod\s+account\s+push\s+delete", audit)

    # The other way: a company edited in the CRM, pulled, is in the BSS. Every listed
    # account has its final puller row; only the edited one was written: the others are
    # the records the demo pushed, listed back, and the loop guard keeps them `unchanged`.
    pulled = re.search(r"^RESULT: the CRM edit is in the BSS: account (acc_\w+) named "
                       r"'(.+ \(edited in the CRM\))' \(pull run \S+: (\d+) records listed; "
                       r"the puller: (.+)\)$", output, re.MULTILINE)
    assert pulled, output
    assert int(pulled.group(3)) == accounts
    outcomes = dict((o, int(n)) for n, o in re.findall(r"(\d+) (\w+)", pulled.group(4)))
    assert outcomes == {"updated": 1, "unchanged": accounts - 1}, outcomes
    assert re.search(rf"puller\s+acme-telecom\s+acme-crm-prod\s+account\s+pull\s+upsert\s+"
                     rf"{pulled.group(1)}\s+\d+\s+updated", output), output
    assert "all processes stopped" in output
    assert f"dropped: database {database}" in output
    assert not processes_mentioning(database), processes_mentioning(database)
    print(f"the demo took {time.monotonic() - started:.1f} s")
