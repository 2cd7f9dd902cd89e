"""The seeded fault schedule of the chaos suite (pure: a seed and a span make a list).

Two lanes run side by side while the workload writes to the BSS:

* the **infrastructure lane** — one fault at a time, each followed by a pause: a
  service or the sandbox BSS SIGKILLed and restarted after a downtime, the broker's
  connections closed, PostgreSQL's connections cut or refused for a while, the
  test's RabbitMQ node stopped (``stop_app``) or SIGKILLed and started again;
* the **third-party lane** — fault windows of the HTTP proxy (5xx, answers held past
  the read timeout, ``HTTP/1.1 999``, garbage bodies, connections dropped), each for
  a share of the requests.

Every kind of a lane occurs at least once (in an order the seed shuffles); the rest
of the span is filled with kinds the seed draws, but the broker's own faults occur
once each (a node boot costs seconds in which nothing flows). The same seed and span give the same
schedule; what the faults hit still depends on timing.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from tests.chaos.network import HTTP_FAULTS

KILL_PUSHER = "kill-pusher"
KILL_DISPATCHER = "kill-dispatcher"
KILL_SANDBOX = "kill-sandbox"
CLOSE_CONNECTIONS = "close-connections"
CUT_POSTGRES = "cut-postgres"
POSTGRES_DOWN = "postgres-down"
BROKER_STOP_APP = "broker-stop-app"
BROKER_KILL = "broker-kill"

#: Faults that do not need a broker of the test's own.
SHARED_BROKER_FAULTS = (KILL_PUSHER, KILL_DISPATCHER, KILL_SANDBOX, CLOSE_CONNECTIONS,
                        CUT_POSTGRES, POSTGRES_DOWN)
OWN_NODE_FAULTS = (BROKER_STOP_APP, BROKER_KILL)


@dataclasses.dataclass(frozen=True)
class Fault:
    """``kind`` at ``at`` seconds into the run, lasting ``duration`` seconds (a downtime,
    or a window); ``share`` of the requests for third-party faults."""

    at: float
    kind: str
    duration: float
    share: float = 1.0

    def __str__(self) -> str:
        share = f" on {self.share:.0%} of requests" if self.share < 1 else ""
        return f"t+{self.at:5.1f}s {self.kind} for {self.duration:.1f}s{share}"


#: Kinds played once per run: a node boot costs seconds during which nothing flows.
ONCE = frozenset(OWN_NODE_FAULTS)
#: (shortest, longest) duration per kind, seconds; instantaneous kinds have (0, 0).
DURATIONS = {
    KILL_PUSHER: (0.0, 3.0), KILL_DISPATCHER: (0.0, 3.0), KILL_SANDBOX: (0.0, 2.0),
    CLOSE_CONNECTIONS: (0.0, 0.0), CUT_POSTGRES: (0.0, 0.0), POSTGRES_DOWN: (1.0, 4.0),
    BROKER_STOP_APP: (1.0, 4.0), BROKER_KILL: (0.5, 2.0),
}
INFRA_PAUSE = (1.5, 4.0)
HTTP_WINDOW = (1.5, 4.0)
HTTP_PAUSE = (1.0, 3.0)
HTTP_SHARE = (0.2, 0.6)


def _lane(rng: random.Random, span: float, kinds: Sequence[str],
          duration: dict[str, tuple[float, float]], pause: tuple[float, float],
          share: tuple[float, float] | None) -> list[Fault]:
    first = list(kinds)
    rng.shuffle(first)
    again = [k for k in kinds if k not in ONCE]
    faults: list[Fault] = []
    at = rng.uniform(*pause)
    while at < span or first:
        if not first and not again:
            break
        kind = first.pop() if first else rng.choice(again)
        lasting = round(rng.uniform(*duration[kind]), 1)
        faults.append(Fault(round(at, 1), kind, lasting,
                            round(rng.uniform(*share), 2) if share else 1.0))
        at += lasting + rng.uniform(*pause)
    return faults


def make_schedule(seed: int, span: float, infra_kinds: Sequence[str],
                  http_kinds: Sequence[str] = HTTP_FAULTS) -> tuple[list[Fault], list[Fault]]:
    """The two lanes (infrastructure, third party) for ``seed`` over ``span`` seconds.

    Every kind appears at least once even if that runs past ``span``.
    """
    rng = random.Random(seed)
    infra = _lane(rng, span, infra_kinds, DURATIONS, INFRA_PAUSE, None) if infra_kinds else []
    http = _lane(rng, span, http_kinds, dict.fromkeys(http_kinds, HTTP_WINDOW), HTTP_PAUSE,
                 HTTP_SHARE) if http_kinds else []
    return infra, http
