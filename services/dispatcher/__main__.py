"""``python -m services.dispatcher``: fan BSS events out to the instances that push them."""

from __future__ import annotations

import sys

from services.dispatcher.events import EVENT_CODEC, EventHandler
from shared.messaging.runner import RuntimeDeps, main
from shared.storage.instances import InstanceStore
from shared.storage.organizations import OrganizationStore


def make_handler(deps: RuntimeDeps) -> EventHandler:
    return EventHandler(InstanceStore(deps.db), OrganizationStore(deps.db), deps.publisher)


if __name__ == "__main__":
    sys.exit(main("dispatcher", EVENT_CODEC, make_handler))
