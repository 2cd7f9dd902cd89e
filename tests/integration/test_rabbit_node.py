"""The test's own RabbitMQ node (tests/fixtures/rabbit_node.py) does what the broker-fault
tests rely on: it is not the shared node, it survives stop_app/start_app and a SIGKILL
of its VM with its data, and its teardown leaves no process behind."""

from __future__ import annotations

import os

from kombu import Connection, Queue

from tests.fixtures.rabbit_node import RabbitNode, own_node

QUORUM = {"x-queue-type": "quorum"}


def _publish(url: str, queue: str, count: int) -> None:
    with Connection(url) as conn:
        conn.default_channel.confirm_select()
        Queue(queue, durable=True, queue_arguments=QUORUM)(conn.default_channel).declare()
        producer = conn.Producer()
        for i in range(count):
            producer.publish({"n": i}, routing_key=queue, delivery_mode=2)


def _ready(url: str, queue: str) -> int:
    with Connection(url) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


def test_the_own_node_is_not_the_shared_one(own_rabbit_node: RabbitNode) -> None:
    assert own_rabbit_node.nodename.startswith(f"bsst-{os.getpid()}-")
    assert own_rabbit_node.amqp_port != 5672
    status = own_rabbit_node.rabbitmqctl("eval", "node().")
    assert own_rabbit_node.nodename in status


def test_messages_survive_stop_app_and_a_kill(own_rabbit_node: RabbitNode) -> None:
    node = own_rabbit_node
    _publish(node.amqp_url, "smoke", 10)
    node.stop_app()
    node.start_app()
    assert _ready(node.amqp_url, "smoke") == 10
    killed = node.kill()
    assert not _alive(killed)
    node.start()
    assert _ready(node.amqp_url, "smoke") == 10


def test_teardown_kills_the_node_and_removes_its_directory() -> None:
    with own_node() as node:
        pid = node.os_pid()
        home = node.home
    assert not _alive(pid)
    assert not home.exists()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and not yet reaped by init, does not)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return "State:\tZ" not in status.read()
    except OSError:
        return False
