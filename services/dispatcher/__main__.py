"""``python -m services.dispatcher``: fan BSS events out to the instances that push them.

``--help`` lists the environment it reads (shared.cli.service).
"""

from __future__ import annotations

import sys

from services.dispatcher.events import EVENT_CODEC, EventHandler
from shared.cli.service import parse_service_args
from shared.messaging.runner import RuntimeDeps, main
from shared.messaging.topology import DISPATCHER
from shared.storage.instances import InstanceStore
from shared.storage.organizations import OrganizationStore

SUMMARY = ("Consume BSS entity-changed events (bss.events) and publish one push message "
           "per enabled instance of the organization that may push the entity.")


def make_handler(deps: RuntimeDeps) -> EventHandler:
    return EventHandler(InstanceStore(deps.db), OrganizationStore(deps.db), deps.publisher)


if __name__ == "__main__":
    parse_service_args(DISPATCHER, SUMMARY)
    # A BSS publishes at least once, and its second copy of an event looks like a first:
    # every event is looked up in the audit log, in batches (docs/architecture.md §5).
    sys.exit(main(DISPATCHER, EVENT_CODEC, make_handler, always_deduplicate=True))
