"""The messaging runtime: RabbitMQ topology, publishing, and the consumer every service runs.

Modules, one concept each:

    topology      the only place that spells exchange and queue names; declare_topology
    envelope      the sync message envelope (SyncMessage): decode, validate, encode
    codec         decoders per kind of message, InboundMessage, HandlerResult
    publisher     confirms tracked asynchronously, mandatory publishing
    settle        pure policy: Ack / Retry / Dead and the dead-letter headers
    processing    one delivery: decode → de-duplicate → handle → settle
    delivery      deliveries, their consume channel, batched acks
    consumer      connection, prefetch, workers, reconnection, graceful stop, burst mode
    runner        a service's bootstrap (run_consumer, main)
    management    RabbitMQ management API client (tooling, tests)
    tooling       synchronous kombu helpers (publish, exact queue depth, peek)

The guarantees (docs/architecture.md §4/§5):

* a message is acked only after its outcome is durable — the retry/dead copy
  confirmed by the broker, then its audit row committed;
* a redelivered message whose ``(message id, attempt)`` already has an audit row
  is acked without running its handler again;
* messages are never lost: what cannot be settled stays unacked (or is nacked
  back) and the broker redelivers it; the work queues' delivery limit sends a
  message that keeps failing that way to its dead queue.

Delivery is at least once. The window between a confirmed retry copy and its
audit commit is where a crash can leave a duplicate copy; the duplicate is
recognised when it meets the audit row, and the link claim of docs/architecture.md §5 step 2
keeps two deliveries from both creating a record remotely.
"""

from shared.messaging.codec import SYNC_CODEC, Codec, Handler, HandlerResult, InboundMessage
from shared.messaging.consumer import Consumer, ConsumerConfig
from shared.messaging.envelope import SyncMessage, decode_sync_message, encode
from shared.messaging.live_publisher import LivePublisher
from shared.messaging.publisher import (
    OutgoingMessage,
    Publisher,
    PublishFailed,
    PublishNacked,
    Unroutable,
)
from shared.messaging.topology import (
    DEAD_EXCHANGE,
    EVENTS_EXCHANGE,
    PULL_EXCHANGE,
    PUSH_EXCHANGE,
    TopologyConflict,
    WorkQueue,
    declare_topology,
    sync_routing_key,
)

__all__ = [
    "DEAD_EXCHANGE",
    "EVENTS_EXCHANGE",
    "PULL_EXCHANGE",
    "PUSH_EXCHANGE",
    "SYNC_CODEC",
    "Codec",
    "Consumer",
    "ConsumerConfig",
    "Handler",
    "HandlerResult",
    "InboundMessage",
    "LivePublisher",
    "OutgoingMessage",
    "PublishFailed",
    "PublishNacked",
    "Publisher",
    "SyncMessage",
    "TopologyConflict",
    "Unroutable",
    "WorkQueue",
    "declare_topology",
    "decode_sync_message",
    "encode",
    "sync_routing_key",
]
