"""Messages survive a broker that stops or dies (docs/architecture.md §4, "What is guaranteed").

On a RabbitMQ node of the test's own (tests/fixtures/rabbit_node.py, never the shared
one): the copies waiting in every retry queue, the messages in every work queue and
those dead-lettered out of it are all delivered after ``rabbitmqctl stop_app`` /
``start_app`` and after a SIGKILL of the node's VM; each one is counted. With classic
retry queues (at-most-once dead-lettering) the retry copies that expired while the
broker recovered vanished.
The first tests check the fixture itself: it is not the shared node, and its
teardown leaves no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from kombu import Connection, Exchange, Producer, Queue

from shared.messaging.topology import WorkQueue, declare_topology, work_queues
from tests.fixtures.rabbit_node import RabbitNode, node_home, own_node, require_rabbitmq_server
from tests.fixtures.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
BSS_SYNC = Path(sys.executable).parent / "bss-sync"
QUORUM = {"x-queue-type": "quorum"}
#: Long enough that the copies are still in the retry queues when the broker stops,
#: short enough that they expire while it is down.
LADDER = (3.0, 4.0)
PER_QUEUE = 50
DEAD_PER_SERVICE = 10


def _publish_plain(url: str, queue: str, count: int) -> None:
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        Queue(queue, durable=True, queue_arguments=QUORUM)(conn.default_channel).declare()
        producer = conn.Producer()
        for i in range(count):
            producer.publish({"n": i}, routing_key=queue, delivery_mode=2)


def _ready(url: str, queue: str) -> int:
    with Connection(url) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and not yet reaped by init, does not)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return "State:\tZ" not in status.read()
    except OSError:
        return False


# ------------------------------------------------------------------------- the fixture


def test_the_own_node_is_not_the_shared_one(own_rabbit_node: RabbitNode) -> None:
    assert own_rabbit_node.nodename.startswith(f"bsst-{os.getpid()}-")
    assert own_rabbit_node.amqp_port != 5672
    assert own_rabbit_node.nodename in own_rabbit_node.eval("node().")


def test_teardown_kills_the_node_and_removes_its_directory() -> None:
    """Even a node still booting: its VM is killed and its directory removed."""
    sbin = require_rabbitmq_server()
    with node_home() as home:
        node = RabbitNode(home, sbin)
        node.launch()
        vm = wait_until(lambda: _vm_of(home), timeout=30, what="the node's VM to start")
        node.close()
    assert not _alive(vm)
    assert not home.exists()


def _vm_of(home: Path) -> int | None:
    """The pid of the Erlang VM started from ``home``, if there is one yet."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"beam" in cmdline and str(home).encode() in cmdline:
                return int(entry.name)
    return None


# --------------------------------------------------------------------- at least once


def _work_routing_key(queue: WorkQueue) -> str:
    return "account.updated" if queue.source_exchange == "bss.events" else \
        "account.update.org-1.inst-1"


def _fill(url: str, tag: str) -> dict[str, set[str]]:
    """Messages in every retry queue, in every work queue, and dead-lettered out of every
    work queue while its dead queue is unbound (held by the broker until it has a route);
    returns the message ids each work and dead queue must end up holding."""
    expected: dict[str, set[str]] = {}
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.default_channel)
        for queue in work_queues(LADDER):
            dead = {f"{tag}-{queue.service}-dead-{i}" for i in range(DEAD_PER_SERVICE)}
            work = {f"{tag}-{queue.service}-work-{i}" for i in range(PER_QUEUE)}
            source = Exchange(queue.source_exchange, type="topic", durable=True)
            for message_id in sorted(dead) + sorted(work):
                producer.publish({"id": message_id}, exchange=source, message_id=message_id,
                                 routing_key=_work_routing_key(queue), delivery_mode=2)
            _reject_unroutable(conn, queue, DEAD_PER_SERVICE)  # the dead ones came first
            for retry in queue.retry_queues:
                ids = [f"{tag}-{retry.name}-{i}" for i in range(PER_QUEUE)]
                for message_id in ids:
                    producer.publish({"id": message_id}, exchange="", routing_key=retry.name,
                                     message_id=message_id, delivery_mode=2)
                work |= set(ids)
            expected[queue.name] = work
            expected[queue.dead_queue] = dead
    return expected


def _reject_unroutable(conn: Connection, queue: WorkQueue, count: int) -> None:
    """Reject ``count`` messages off the head of the work queue while its dead queue is not
    bound: dead-lettered at most once they would be dropped; at least once, the broker
    keeps them until a route exists (here: until it restarts, when it tries again)."""
    channel = conn.channel()
    channel.queue_unbind(queue.dead_queue, queue.dead_exchange, queue.dead_binding_key)
    for _ in range(count):
        message = channel.basic_get(queue.name, no_ack=False)
        assert message is not None
        channel.basic_reject(message.delivery_tag, requeue=False)
    channel.queue_bind(queue.dead_queue, queue.dead_exchange, queue.dead_binding_key)
    channel.close()


def _drain(url: str, queue: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    with Connection(url) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            seen[message.properties["message_id"]] += 1
    return seen


def _down_until(deadline: float) -> None:
    """Keep the broker down until ``deadline``: the fault's duration (the retry copies'
    TTL runs out meanwhile, as in a real outage), not a wait for anything to happen."""
    time.sleep(max(0.0, deadline - time.monotonic()))


def test_every_queued_message_survives_the_broker_going_down(
        own_rabbit_node: RabbitNode) -> None:
    """Two rounds on one vhost: ``stop_app`` / ``start_app``, then SIGKILL and a new boot.

    (In that order: on RabbitMQ 3.10.8 a quorum queue SIGKILLed within seconds of its
    declaration sometimes never elected a leader again; a queue that has lived through
    a clean stop always did. Installations' queues are not seconds old.)
    """
    node = own_rabbit_node
    url = node.add_vhost("at-least-once")
    declare_topology(url, LADDER, 5)
    _round(node, url, "stop_app")
    _round(node, url, "kill")


def _round(node: RabbitNode, url: str, fault: str) -> None:
    filled_at = time.monotonic()
    expected = _fill(url, fault)
    retries = [r.name for q in work_queues(LADDER) for r in q.retry_queues]
    assert {r: _ready(url, r) for r in retries} == dict.fromkeys(retries, PER_QUEUE)

    # Down past the copies' TTL: they expire while the broker recovers, when the work
    # queues have no leader yet (at most once, "leader not known. Command is dropped").
    if fault == "stop_app":
        node.stop_app()
        _down_until(filled_at + max(LADDER) + 1)
        node.start_app()
    else:
        node.kill()
        _down_until(filled_at + max(LADDER) + 1)
        node.start()

    def depths() -> dict[str, int]:
        return {q: _ready(url, q) for q in [*retries, *expected]}

    want = {**dict.fromkeys(retries, 0), **{q: len(ids) for q, ids in expected.items()}}
    wait_until(lambda: depths() == want, timeout=90, interval=0.5,
               what=f"after {fault}: every retry copy back in its work queue, every dead "
                    "letter delivered", state=depths)
    for queue, ids in expected.items():
        seen = _drain(url, queue)
        assert set(seen) == ids, f"{fault}, {queue}: missing {sorted(ids - set(seen))[:5]}"
        assert sum(seen.values()) == len(ids), \
            f"{fault}, {queue}: duplicates {seen.most_common(3)}"


# ------------------------------------------------------------- a broker that cannot


#: A node created without the stream_queue feature flag, as one upgraded from 3.9 may be.
NO_STREAMS = ("[{rabbit, [{forced_feature_flags_on_init, [quorum_queue, "
              "implicit_default_bindings, virtual_host_metadata, maintenance_mode_status, "
              "user_limits]}]}].\n")


def test_a_broker_that_would_dead_letter_at_most_once_is_refused() -> None:
    """Without the stream_queue feature flag RabbitMQ accepts the at-least-once strategy
    and ignores it: ``topology declare`` and the services refuse such a broker."""
    with own_node(advanced_config=NO_STREAMS) as node:
        assert "stream_queue\tdisabled" in node.rabbitmqctl("list_feature_flags")
        env = {**os.environ, "AMQP_URL": node.amqp_url, "LOG_FORMAT": "json"}
        declared = subprocess.run([str(BSS_SYNC), "topology", "declare"], env=env, cwd=REPO,
                                  capture_output=True, text=True, timeout=60, check=False)
        service = subprocess.run([sys.executable, "-m", "services.pusher"], env=env, cwd=REPO,
                                 capture_output=True, text=True, timeout=60, check=False)
    assert declared.returncode == 1, declared.stderr
    assert declared.stdout == ""
    [line] = declared.stderr.splitlines()
    assert line.startswith(f"bss-sync: RabbitMQ at 127.0.0.1:{node.amqp_port} (vhost \"/\", "
                           "user guest) cannot dead-letter at least once: it refused a stream "
                           "queue (")
    assert line.endswith("bss-sync needs RabbitMQ 3.10 or later with the stream_queue feature "
                         "flag enabled (`rabbitmqctl enable_feature_flag stream_queue`)")
    assert service.returncode == 78, service.stderr
    [logged] = [json.loads(line) for line in service.stdout.splitlines()
                if '"cannot start"' in line]
    assert "cannot dead-letter at least once" in logged["error"]
