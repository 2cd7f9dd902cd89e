"""``python -m services.pusher``: consume ``pusher`` and push records to third parties.

``--help`` lists the environment it reads (shared.cli.service).
"""

from __future__ import annotations

import sys

from services.pusher.handler import PushHandler
from shared.bss import BssClient
from shared.cli.service import parse_service_args
from shared.credentials import resolve_credential
from shared.messaging.codec import SYNC_CODEC
from shared.messaging.runner import RuntimeDeps, main
from shared.messaging.topology import PUSHER
from shared.runtime import InstanceRegistry
from shared.storage.links import LinkStore

SUMMARY = ("Consume push messages (the pusher queue), read each record from the BSS API "
           "and create, update or delete it in the instance's third-party system.")


def make_handler(deps: RuntimeDeps) -> PushHandler:
    """Build the pusher's dependencies (one registry and one BSS client per process)."""
    token = (resolve_credential(deps.settings.bss_api_token)
             if deps.settings.bss_api_token else None)
    bss = BssClient(deps.settings.bss_api_url, token=token,
                    batch_reads=deps.settings.bss_api_batch_reads)
    # Link writes may commit without waiting for their WAL flush: the audit row's
    # synchronous commit, which the ack waits for, comes after them (shared.storage.db);
    # a pending create's note waits for its own, on the synchronous pool, before the
    # request goes out.
    links = LinkStore(deps.coordination_db or deps.db, batched=True, durable=deps.db)
    return PushHandler(InstanceRegistry(deps.db), links, bss, deps.audit)


if __name__ == "__main__":
    parse_service_args(PUSHER, SUMMARY)
    sys.exit(main(PUSHER, SYNC_CODEC, make_handler))
