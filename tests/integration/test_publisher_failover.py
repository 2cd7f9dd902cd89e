"""A publisher whose channel a quorum queue refuses for good moves to a fresh one
(shared/messaging/publisher.py; docs/architecture.md §4).

On RabbitMQ 3.10 a channel keeps, per quorum queue, the members as they were at its
first publish to it. A channel whose first publish finds the recorded leader's node
down is nacked, and stays nacked for that queue even once a new leader serves it; a
new channel is not. The cluster is the test's own (tests/fixtures/rabbit_node.py):
the node leading the queue and one more are killed, a publisher on the survivor is
refused, a node comes back, a new leader is elected — and the publisher's message
gets in, on a fresh channel.
"""

from __future__ import annotations

import json
import time

import pika

from shared.messaging.connection import open_connection
from shared.messaging.publisher import Publisher, PublishNacked
from tests.fixtures.rabbit_node import RabbitCluster
from tests.fixtures.waiting import wait_until

QUEUE = "failover"
#: A quorum queue killed within seconds of its declaration may never elect a leader
#: again on 3.10.8 (tests/fixtures/rabbit_node.py): it lives this long first.
SETTLE_SECONDS = 6


def _leader(nodes: RabbitCluster, via: int) -> str:
    out = nodes[via].rabbitmqctl("list_queues", "name", "leader", "--formatter", "json")
    return next(q["leader"] for q in json.loads(out) if q["name"] == QUEUE)


def _depth(url: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return connection.channel().queue_declare(QUEUE, passive=True).method.message_count
    finally:
        connection.close()


def _declare(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        channel.basic_publish("", QUEUE, b"{}", pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


async def test_a_channel_refused_after_its_queues_leader_died_is_replaced(
        own_rabbit_cluster: RabbitCluster) -> None:
    nodes = own_rabbit_cluster
    _declare(nodes[0].amqp_url)
    time.sleep(SETTLE_SECONDS)
    leader = nodes.node_named(_leader(nodes, 0))
    survivor, other = (node for node in nodes if node is not leader)
    leader.kill()
    other.kill()

    connection = await open_connection(survivor.amqp_url, "failover test")
    try:
        publisher = await Publisher.open(connection, nack_patience=0)
        try:
            await publisher.publish("", QUEUE, b'{"n": 1}', message_id="refused")
            raise AssertionError("a queue without a quorum took a message")
        except PublishNacked:
            pass
        other.start()
        wait_until(lambda: _leader(nodes, nodes.index(survivor)) != leader.nodename,
                   timeout=60, interval=0.5, what="a new leader of the queue")
        publisher.nack_patience = 20
        await publisher.publish("", QUEUE, b'{"n": 2}', message_id="taken")
        assert publisher.renewals >= 1
        await publisher.close()
    finally:
        await connection.close()
    assert _depth(survivor.amqp_url) == 2
    leader.start()  # the module's nodes are left started
