"""``python -m services.puller``: consume ``puller`` and write external records to the BSS.

``--help`` lists the environment it reads (shared.cli.service).
"""

from __future__ import annotations

import sys

from services.puller.handler import PullHandler
from shared.bss import BssClient
from shared.cli.service import parse_service_args
from shared.credentials import resolve_credential
from shared.messaging.codec import SYNC_CODEC
from shared.messaging.runner import RuntimeDeps, main
from shared.messaging.topology import PULLER
from shared.runtime import InstanceRegistry
from shared.storage.links import LinkStore

SUMMARY = ("Consume pull messages (the puller queue), transform each external record to "
           "its canonical entity, and create, update or delete it through the BSS API.")


def make_handler(deps: RuntimeDeps) -> PullHandler:
    """Build the puller's dependencies (one registry and one BSS client per process)."""
    token = (resolve_credential(deps.settings.bss_api_token)
             if deps.settings.bss_api_token else None)
    bss = BssClient(deps.settings.bss_api_url, token=token, batch_reads=False)
    # Link writes may commit without waiting for their WAL flush: the audit row's
    # synchronous commit, which the ack waits for, comes after them (shared.storage.db).
    # Concurrent pulls share their claim and link statements (batched).
    links = LinkStore(deps.coordination_db or deps.db, batched=True)
    return PullHandler(InstanceRegistry(deps.db), links, bss, deps.audit)


if __name__ == "__main__":
    parse_service_args(PULLER, SUMMARY)
    sys.exit(main(PULLER, SYNC_CODEC, make_handler))
