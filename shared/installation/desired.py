"""The desired state a valid installation file describes: the rows ``config_sync`` applies.

Pure: a validated file and its loaded connectors in, a
:class:`~shared.storage.config_sync.DesiredState` out. Defaults are resolved
here: an organization's time zone falls back to the installation's, an
instance is active only when its organization is, a schedule object without a
cron inherits the installation's.
"""

from __future__ import annotations

from typing import Any

from shared.storage.config_sync import (
    DesiredConnector,
    DesiredInstance,
    DesiredOrganization,
    DesiredSchedule,
    DesiredState,
)
from shared.storage.schedules import DEFAULT_CRON


def desired_state(data: dict[str, Any], connectors: dict[str, Any]) -> DesiredState:
    """The rows a valid file ``data`` describes; ``connectors`` maps id → loaded document."""
    timezone = data.get("timezone", "UTC")
    return DesiredState(
        connectors=[_desired_connector(entry, connectors[entry["id"]])
                    for entry in data.get("connectors", [])],
        organizations=[DesiredOrganization(o["id"], o["name"], o.get("timezone", timezone),
                                           o.get("active", True))
                       for o in data.get("organizations", [])],
        instances=[_desired_instance(org, inst) for org in data.get("organizations", [])
                   for inst in org.get("instances", [])],
        schedules=_desired_schedules(data, timezone),
    )


def _desired_connector(entry: dict[str, Any], document: Any) -> DesiredConnector:
    specs = [entry["spec"]] if isinstance(entry["spec"], str) else list(entry["spec"])
    return DesiredConnector(entry["id"], str(document.title), str(document.version),
                            document.sha256, document.document,
                            {"spec": specs, "overlay": entry.get("overlay"),
                             **({"refs": entry["refs"]} if entry.get("refs") else {})})


def _desired_instance(org: dict[str, Any], inst: dict[str, Any]) -> DesiredInstance:
    settings = dict(inst.get("settings", {}))
    for key in ("lookups", "rateLimit", "timeouts", "conflict"):
        if key in inst:
            settings[key] = inst[key]
    permissions = frozenset(
        (entity, direction, action)
        for entity, directions in inst.get("permissions", {}).items()
        for direction, actions in directions.items() for action in actions
    )
    return DesiredInstance(
        id=inst["id"], org_id=org["id"], connector_id=inst["connector"], name=inst["name"],
        server_url=inst.get("server"), variables=dict(inst.get("variables", {})),
        credentials=dict(inst.get("credentials", {})), settings=settings,
        active=bool(org.get("active", True) and inst.get("active", True)),
        permissions=permissions,
    )


def _schedule(scope: str, scope_id: str, value: str | dict[str, Any],
              fallback_cron: str = DEFAULT_CRON, timezone: str | None = None) -> DesiredSchedule:
    if isinstance(value, str):
        return DesiredSchedule(scope, scope_id, value, timezone)
    return DesiredSchedule(scope, scope_id, value.get("cron", fallback_cron),
                           value.get("timezone", timezone), value.get("enabled", True))


def _desired_schedules(data: dict[str, Any], timezone: str) -> list[DesiredSchedule]:
    schedules = [_schedule("installation", "", data.get("schedule", DEFAULT_CRON),
                           timezone=timezone)]
    installation_cron = schedules[0].cron
    for org in data.get("organizations", []):
        if "schedule" in org:
            schedules.append(_schedule("organization", org["id"], org["schedule"],
                                       installation_cron))
        for inst in org.get("instances", []):
            if "schedule" in inst:
                schedules.append(_schedule("instance", inst["id"], inst["schedule"],
                                           installation_cron))
    return schedules
