"""``python -m services.dispatcher``: fan BSS events out to the instances that push them,
and run the schedules: each instance's runs (push, then pull) and the daily redelivery of
dead letters (``services.dispatcher.schedule``).

``--help`` lists the environment it reads (shared.cli.service).
"""

from __future__ import annotations

import sys

from services.dispatcher.events import EVENT_CODEC, EventHandler
from services.dispatcher.schedule import run_schedules
from shared.cli.service import parse_service_args
from shared.messaging.runner import RuntimeDeps, main
from shared.messaging.topology import DISPATCHER
from shared.storage.instances import InstanceStore
from shared.storage.organizations import OrganizationStore

SUMMARY = ("Consume BSS entity-changed events (bss.events) and publish one push message "
           "per enabled instance of the organization that may push the entity; start "
           "each instance's scheduled runs and the daily redelivery of dead letters.")


def make_handler(deps: RuntimeDeps) -> EventHandler:
    return EventHandler(InstanceStore(deps.db), OrganizationStore(deps.db), deps.publisher)


if __name__ == "__main__":
    parse_service_args(DISPATCHER, SUMMARY)
    # A BSS publishes at least once, and its second copy of an event looks like a first:
    # every event is looked up in the audit log, in batches (docs/architecture.md §5).
    sys.exit(main(DISPATCHER, EVENT_CODEC, make_handler, always_deduplicate=True,
                  companions=[run_schedules]))
