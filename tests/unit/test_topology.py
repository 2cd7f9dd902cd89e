"""Queue names and arguments: the topology is contract (docs/architecture.md §4).

The one test module that spells the names: it holds shared.messaging.topology to the
names the architecture documents. Everything else imports them from there.
"""

from __future__ import annotations

import pytest

from shared.messaging.topology import (
    DEAD_EXCHANGE,
    Conflict,
    WorkQueue,
    conflict_message,
    format_delay,
    holding_queue,
    retry_queue_arguments,
    sync_routing_key,
    topology,
    work_queue_arguments,
)
from shared.settings import DEFAULT_RETRY_DELAYS


@pytest.mark.parametrize(("seconds", "text"), [
    (30, "30s"), (120, "2m"), (600, "10m"), (3600, "1h"), (0.2, "200ms"), (90, "90s"),
    (5400, "90m"), (7200, "2h"), (1.5, "1500ms")])
def test_delay_names(seconds: float, text: str) -> None:
    assert format_delay(seconds) == text


def test_a_delay_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        format_delay(0)


def test_the_default_ladder_names_the_retry_queues_of_the_design() -> None:
    queue = WorkQueue("pusher", DEFAULT_RETRY_DELAYS)
    assert [r.name for r in queue.retry_queues] == [
        "pusher.retry.30s", "pusher.retry.2m", "pusher.retry.10m", "pusher.retry.1h"]
    assert queue.retry_queue(1).ttl_ms == 120_000
    assert queue.retry_queue(1).work_queue == "pusher"


@pytest.mark.parametrize(("service", "name", "exchange"), [
    ("pusher", "pusher", "sync.push"), ("puller", "puller", "sync.pull"),
    ("dispatcher", "dispatcher.events", "bss.events")])
def test_work_queues(service: str, name: str, exchange: str) -> None:
    queue = WorkQueue(service)
    assert queue.name == name
    assert queue.source_exchange == exchange
    assert queue.dead_queue == f"{service}.dead"
    assert queue.retry_queue(0).work_queue == name


def test_unknown_services_and_duplicate_delays_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown service"):
        WorkQueue("mailer")
    with pytest.raises(ValueError, match="distinct"):
        WorkQueue("pusher", (60, 60))


def test_routing_keys() -> None:
    assert sync_routing_key("invoice", "create", "org-1", "prod_2") == \
        "invoice.create.org-1.prod_2"
    queue = WorkQueue("puller")
    assert queue.dead_routing_key("invoice.create.o.i") == "puller.invoice.create.o.i"
    assert queue.dead_routing_key() == "puller"
    assert queue.dead_binding_key == "puller.#"


def test_work_queue_arguments() -> None:
    assert work_queue_arguments(WorkQueue("pusher"), 20) == {
        "x-queue-type": "quorum", "x-delivery-limit": 20,
        "x-dead-letter-exchange": DEAD_EXCHANGE, "x-dead-letter-routing-key": "pusher",
        "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def test_retry_queues_dead_letter_back_to_the_work_queue_after_their_ttl() -> None:
    retry = WorkQueue("dispatcher", (0.2,)).retry_queue(0)
    assert retry.name == "dispatcher.retry.200ms"
    assert retry_queue_arguments(retry) == {
        "x-queue-type": "quorum", "x-message-ttl": 200, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "dispatcher.events",
        "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def test_every_queue_that_dead_letters_does_it_at_least_once() -> None:
    """At-least-once dead-lettering needs a quorum source queue with reject-publish
    (docs/architecture.md §4); at most once, retry copies vanished on a broker restart."""
    _, queues = topology((30, 120), 7)
    dead_lettering = [q for q in queues if "x-dead-letter-exchange" in q.queue_arguments]
    assert len(dead_lettering) == 3 * 3
    for queue in dead_lettering:
        args = queue.queue_arguments
        assert (args["x-queue-type"], args["x-dead-letter-strategy"], args["x-overflow"]) == (
            "quorum", "at-least-once", "reject-publish"), queue.name


def test_a_conflict_says_what_differs_and_which_command_migrates() -> None:
    _, queues = topology((30,), 7)
    by_name = {q.name: q for q in queues}
    conflicts = [
        Conflict(by_name["pusher.retry.30s"], "PRECONDITION_FAILED - inequivalent arg "
                 "'x-queue-type' for queue 'pusher.retry.30s' in vhost '/': received "
                 "'quorum' but current is 'classic'"),
        Conflict(by_name["pusher"], "PRECONDITION_FAILED - inequivalent arg "
                 "'x-dead-letter-strategy'"),
    ]
    text = conflict_message(conflicts, "amqp://u:secret@rabbit:5672/prod")
    assert text.startswith('the topology on RabbitMQ at rabbit:5672 (vhost "prod", user u) '
                           "is not the one this version declares: queue 'pusher.retry.30s': "
                           "inequivalent arg 'x-queue-type'")
    assert "(and 1 more: pusher)" in text
    assert "run `bss-sync topology declare` to migrate the queues" in text
    assert "secret" not in text and "\n" not in text


def test_holding_queues_are_named_after_their_queue() -> None:
    assert holding_queue("dispatcher.events") == "dispatcher.events.migrating"


def test_the_whole_topology() -> None:
    exchanges, queues = topology((30, 120), 7)
    assert {e.name: e.type for e in exchanges} == {
        "bss.events": "topic", "sync.push": "topic", "sync.pull": "topic", "sync.dead": "topic"}
    by_name = {q.name: q for q in queues}
    assert set(by_name) == {
        f"{s}{suffix}" for s in ("pusher", "puller") for suffix in
        ("", ".retry.30s", ".retry.2m", ".dead", ".parked")} | {
        "dispatcher.events", "dispatcher.retry.30s", "dispatcher.retry.2m", "dispatcher.dead"}
    assert all(q.durable for q in queues)
    assert by_name["pusher.dead"].queue_arguments == {"x-queue-type": "quorum"}
    [binding] = by_name["pusher.dead"].bindings
    assert (binding.exchange.name, binding.routing_key) == ("sync.dead", "pusher.#")
    [binding] = by_name["dispatcher.events"].bindings
    assert (binding.exchange.name, binding.routing_key) == ("bss.events", "#")
    assert not by_name["puller.retry.2m"].bindings
    assert by_name["puller.parked"].queue_arguments == {"x-queue-type": "quorum"}
    assert not by_name["puller.parked"].bindings
