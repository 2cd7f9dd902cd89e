"""The chaos suite's exact reconciliation (pure): a :class:`Snapshot` of everything
observable at the end of a run in, a :class:`Report` of every discrepancy out.

What must hold (issue 9, part 9):

* **records** — every BSS record of the organization is in the third party exactly
  once with its latest values (a deleted one: not at all), *or* it has a dead letter
  with a readable reason and no message of its latest change claims success. Never
  twice, whatever else. Nothing in the third party that no BSS record explains.
* **messages** — every message the pusher handled (its rows, its dead letters) has
  exactly one final audit row (``created``, ``updated``, ``deleted``, ``unchanged``,
  ``skipped``, ``dead``); every event the BSS published has exactly one final
  dispatcher row (``dispatched``, ``skipped``, ``dead``); the outbox is empty.
* **queues** — no queue but a dead queue holds a message (services stopped: nobody
  will consume it); every dead letter says why (``x-error``, or the broker's
  ``x-death``).
* **links** — no claim left held; a record in the third party whose last message
  did not die is linked to the very object that holds it.

The oracle for "latest values" is :mod:`tests.e2e.records` (the Acme mapping written
out by hand). Each problem names the record or message and shows its audit trail,
so that a failure says what was lost, duplicated or stuck.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from typing import Any

from tests.e2e.records import expected_company, expected_person, mapping_differences

Record = dict[str, Any]
PUSH_FINAL = frozenset({"created", "updated", "deleted", "unchanged", "skipped", "dead"})
DISPATCH_FINAL = frozenset({"dispatched", "skipped", "dead"})
SUCCESS = PUSH_FINAL - {"dead"}
#: The third party's collection for each BSS entity (connectors/acme-crm.json).
COLLECTIONS = {"account": "companies", "contact": "people"}
SHOWN = 12  # examples shown per kind of problem


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    queue: str
    message_id: str | None
    headers: dict[str, Any]
    body: Record | None

    @property
    def record_id(self) -> str | None:
        body = self.body or {}
        return self.headers.get("x-record-id") or body.get("record_id") or body.get("recordId")

    @property
    def reason(self) -> str | None:
        """What the letter says about why it died (None: nothing readable)."""
        error = self.headers.get("x-error")
        if isinstance(error, (str, bytes)) and error:
            kind = self.headers.get("x-error-class") or "?"
            return f"{kind}: {error if isinstance(error, str) else error.decode(errors='replace')}"
        deaths = self.headers.get("x-death")
        if isinstance(deaths, list) and deaths:
            return f"broker: {deaths[0].get('reason')} from {deaths[0].get('queue')}"
        return None


@dataclasses.dataclass
class Snapshot:
    """Everything observable once the run is over (see :mod:`tests.chaos.collect`)."""

    #: ``{record id: {"entity", "data", "deleted"}}`` — the BSS, the organization's records.
    records: dict[str, Record]
    #: ``{record id: event id}`` of each record's last change (outbox order).
    latest_event: dict[str, str]
    #: Every event id the BSS published, and how many it has not published yet.
    events: list[str]
    unpublished: int
    #: ``{"companies": [...], "people": [...]}`` — the third party, read directly.
    third_party: dict[str, list[Record]]
    #: The pusher's and the dispatcher's audit rows of the organization, oldest first.
    audit: list[Record]
    dead_letters: list[DeadLetter]
    #: ``{queue: messages}`` with no consumer attached (exact).
    queues: dict[str, int]
    #: ``links`` rows of the instance.
    links: list[Record]


@dataclasses.dataclass
class Report:
    problems: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, kind: str, item: str) -> None:
        self.problems.setdefault(kind, []).append(item)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = []
        for kind, items in self.problems.items():
            lines.append(f"{kind}: {len(items)}")
            lines += [f"  - {item}" for item in items[:SHOWN]]
            if len(items) > SHOWN:
                lines.append(f"  … and {len(items) - SHOWN} more")
        lines += self.notes
        return "\n".join(lines)


def _trail(rows: list[Record]) -> str:
    """A message's or record's audit rows, short: ``ab12cd34 a0 retrying (Err: msg)``."""
    shown = []
    for row in rows[-8:]:
        error = f" ({row['error_class']}: {(row['error_message'] or '')[:80]})" \
            if row.get("error_class") else ""
        shown.append(f"{str(row['message_id'])[:8]} a{row['attempt']} {row['action']} "
                     f"{row['outcome']}{error}")
    return "; ".join(shown) or "no audit rows"


class _Index:
    """The snapshot looked up by record and by message."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.push_rows = [r for r in snap.audit if r["service"] == "pusher"]
        self.dispatch_rows = [r for r in snap.audit if r["service"] == "dispatcher"]
        self.rows_by_record: dict[str, list[Record]] = defaultdict(list)
        self.rows_by_message: dict[str, list[Record]] = defaultdict(list)
        for row in self.push_rows:
            self.rows_by_record[row["record_id"]].append(row)
            if row["action"] != "dependency":  # a parent's row, under a derived id
                self.rows_by_message[row["message_id"]].append(row)
        self.objects: dict[str, dict[str, list[Record]]] = {}
        for entity, collection in COLLECTIONS.items():
            found: dict[str, list[Record]] = defaultdict(list)
            for item in snap.third_party.get(collection, []):
                found[item.get("bssId")].append(item)
            self.objects[entity] = found
        self.letters_by_record: dict[str, list[DeadLetter]] = defaultdict(list)
        for letter in snap.dead_letters:
            if letter.record_id:
                self.letters_by_record[letter.record_id].append(letter)

    def company_id(self, account_id: str | None) -> Any:
        found = self.objects["account"].get(account_id) or []
        return found[0].get("id") if len(found) == 1 else None

    def latest_claimed_done(self, record_id: str) -> list[str]:
        """Final non-dead outcomes of the messages of the record's latest change."""
        event = self.snap.latest_event.get(record_id)
        return [r["outcome"] for r in self.push_rows
                if r["record_id"] == record_id and r["correlation_id"] == event
                and r["action"] != "dependency" and r["outcome"] in SUCCESS]


def reconcile(snap: Snapshot) -> Report:
    """Every discrepancy of ``snap`` (see the module); an empty report when all holds."""
    report = Report()
    index = _Index(snap)
    _check_records(snap, index, report)
    _check_messages(snap, index, report)
    _check_queues(snap, report)
    _check_links(snap, index, report)
    _notes(snap, index, report)
    return report


def _record_problem(snap: Snapshot, index: _Index, record_id: str) -> str | None:
    """What is wrong with one BSS record in the third party (None: exactly right)."""
    record = snap.records[record_id]
    data, entity = record["data"], record["entity"]
    found = index.objects[entity].get(record_id, [])
    if record["deleted"]:
        return f"deleted in the BSS, still in the third party ({len(found)}x)" if found else None
    if not found:
        return "missing from the third party"
    if len(found) > 1:
        return f"{len(found)}x in the third party"
    expected = expected_company(data) if entity == "account" else \
        expected_person(data, index.company_id(data.get("accountId")))
    differences = mapping_differences(expected, found[0])
    return f"stale: {'; '.join(differences[:3])}" if differences else None


def _check_records(snap: Snapshot, index: _Index, report: Report) -> None:
    for record_id in sorted(snap.records):
        entity = snap.records[record_id]["entity"]
        found = index.objects[entity].get(record_id, [])
        if len(found) > 1:  # never excused, dead letter or not
            report.add("records duplicated in the third party",
                       f"{entity} {record_id}: {len(found)}x (ids "
                       f"{[f.get('id') for f in found]}); audit: "
                       f"{_trail(index.rows_by_record[record_id])}")
            continue
        problem = _record_problem(snap, index, record_id)
        if problem is None:
            continue
        readable = [le.reason for le in index.letters_by_record[record_id] if le.reason]
        claimed = index.latest_claimed_done(record_id)
        if readable and not claimed:
            continue  # dead-lettered with a reason, and nothing says it was done
        why = "no dead letter" if not readable else \
            f"yet its latest change was audited {sorted(set(claimed))}"
        report.add("records not in the third party as the BSS has them",
                   f"{entity} {record_id}: {problem}; {why}; audit: "
                   f"{_trail(index.rows_by_record[record_id])}")
    known = set(snap.records)
    for entity, found in index.objects.items():
        for bss_id, items in found.items():
            if bss_id not in known:
                report.add("objects in the third party no BSS record explains",
                           f"{COLLECTIONS[entity]} {[i.get('id') for i in items]} "
                           f"with bssId {bss_id!r}")


def _check_messages(snap: Snapshot, index: _Index, report: Report) -> None:
    lettered = {le.message_id for le in snap.dead_letters if le.message_id}
    events = set(snap.events)
    push_messages = set(index.rows_by_message) | (lettered - events)
    for message_id in sorted(push_messages):
        rows = index.rows_by_message.get(message_id, [])
        finals = [r["outcome"] for r in rows if r["outcome"] in PUSH_FINAL]
        if len(finals) == 1:
            continue
        record = rows[0]["record_id"] if rows else "?"
        kind = ("push messages without a final audit row" if not finals else
                "push messages with several final audit rows")
        report.add(kind, f"{message_id} (record {record}): {_trail(rows)}")
    by_event: dict[str, list[str]] = defaultdict(list)
    for row in index.dispatch_rows:
        by_event[row["message_id"]].append(row["outcome"])
    for event_id in sorted(events | (lettered & set(by_event))):
        finals = [o for o in by_event.get(event_id, []) if o in DISPATCH_FINAL]
        if len(finals) != 1:
            report.add("events without exactly one final dispatcher row",
                       f"{event_id}: {by_event.get(event_id, [])}")
    if snap.unpublished:
        report.add("events the BSS never published", f"{snap.unpublished} outbox rows")


def _check_queues(snap: Snapshot, report: Report) -> None:
    for queue, count in sorted(snap.queues.items()):
        if count and not queue.endswith(".dead"):
            report.add("queues holding messages nobody will consume", f"{queue}: {count}")
    for letter in snap.dead_letters:
        if letter.reason is None:
            report.add("dead letters without a readable reason",
                       f"{letter.queue} {letter.message_id} (record {letter.record_id}): "
                       f"headers {sorted(letter.headers)}")
    for queue in {le.queue for le in snap.dead_letters}:
        held = sum(1 for le in snap.dead_letters if le.queue == queue)
        if held != snap.queues.get(queue, held):
            report.add("dead queues not read whole",
                       f"{queue}: {snap.queues[queue]} held, {held} read")


def _check_links(snap: Snapshot, index: _Index, report: Report) -> None:
    links = {(row["entity"], row["bss_id"]): row for row in snap.links}
    for row in snap.links:
        if row.get("claim"):
            report.add("link claims still held",
                       f"{row['entity']} {row['bss_id']} by {row['claim']} ({row['state']})")
    for record_id, record in sorted(snap.records.items()):
        found = index.objects[record["entity"]].get(record_id, [])
        finals = [r["outcome"] for r in index.rows_by_record[record_id]
                  if r["action"] != "dependency" and r["outcome"] in PUSH_FINAL]
        if record["deleted"] or len(found) != 1 or (finals and finals[-1] == "dead"):
            continue  # a create whose answer was unusable leaves the link unknowing
        link = links.get((record["entity"], record_id))
        external = str(found[0].get("id"))
        if link is None or link["state"] != "linked" or link["external_id"] != external:
            shown = "no link" if link is None else \
                f"link {link['state']} to {link['external_id']!r}"
            report.add("links that do not point at the third party's object",
                       f"{record['entity']} {record_id}: third party id {external}, {shown}")


def _notes(snap: Snapshot, index: _Index, report: Report) -> None:
    outcomes = Counter(r["outcome"] for r in index.push_rows if r["action"] != "dependency")
    report.notes.append(f"pusher audit rows: {dict(sorted(outcomes.items()))}")
    reasons = Counter((le.queue, (le.reason or "?").split(":", 1)[0]) for le in snap.dead_letters)
    report.notes.append(f"dead letters: {len(snap.dead_letters)} "
                        f"{dict(sorted((f'{q} {k}', n) for (q, k), n in reasons.items()))}")
    twice = [m for m, n in Counter(le.message_id for le in snap.dead_letters).items() if n > 1]
    if twice:
        report.notes.append(f"messages dead-lettered more than once: {len(twice)}")


def in_flight(snap: Snapshot) -> list[str]:
    """Why the flow may still be moving (empty: drained — nothing waits in a queue, and
    every published event has a final dispatcher row and a final pusher row)."""
    index = _Index(snap)
    found = []
    if snap.unpublished:
        found.append(f"{snap.unpublished} events not published yet")
    waiting = {q: n for q, n in snap.queues.items() if n and not q.endswith(".dead")}
    if waiting:
        found.append(f"messages waiting in {waiting}")
    finals = {r["message_id"] for r in index.dispatch_rows if r["outcome"] in DISPATCH_FINAL}
    if missing := set(snap.events) - finals:
        found.append(f"{len(missing)} events without a final dispatcher row")
    dispatched = {r["message_id"] for r in index.dispatch_rows if r["outcome"] == "dispatched"}
    pushed = {r["correlation_id"] for r in index.push_rows if r["outcome"] in PUSH_FINAL}
    if missing := dispatched - pushed:
        found.append(f"{len(missing)} dispatched events without a final pusher row")
    open_messages = [m for m, rows in index.rows_by_message.items()
                     if not any(r["outcome"] in PUSH_FINAL for r in rows)]
    if open_messages:
        found.append(f"{len(open_messages)} push messages without a final row")
    return found


def parse_body(body: bytes) -> Record | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
