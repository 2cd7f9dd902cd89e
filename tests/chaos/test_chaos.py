"""Chaos: 2,000 BSS records written while a seeded schedule of faults hits every part
of the push path, then an exact reconciliation (issue 9, part 9).

    sandbox BSS ─▶ bss.events ─▶ dispatcher ─▶ pusher ─▶ [HTTP fault proxy] ─▶ json-server
         └──────────── all of them ──▶ [TCP proxy] ──▶ PostgreSQL

Faults (:mod:`tests.chaos.schedule`): the pusher, the dispatcher and the sandbox
SIGKILLed and restarted, the broker's connections closed, PostgreSQL's connections
cut or refused for seconds, the third party answering 5xx, ``HTTP/1.1 999``,
garbage, or nothing in time. Then every fault ends, the flow drains, the services
stop, and :func:`~tests.chaos.reconcile.reconcile` must find nothing wrong.

``CHAOS_SEED=<n>`` replays a run's schedule and workload (the seed is printed and in
the failure message); timing still varies.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest

from shared.messaging.topology import DISPATCHER, PUSHER
from tests.chaos.collect import snapshot
from tests.chaos.harness import CHAOS_CONNECTOR, ChaosStack, FaultRunner
from tests.chaos.network import HTTP_FAULTS, HttpFaultProxy
from tests.chaos.reconcile import in_flight, reconcile
from tests.chaos.schedule import OWN_NODE_FAULTS, SHARED_BROKER_FAULTS, make_schedule
from tests.chaos.workload import Writer, make_plan
from tests.e2e.stack import FULL_PUSH
from tests.fixtures.rabbit_node import RabbitNode
from tests.fixtures.tcp_proxy import NetworkLoop, TcpProxy
from tests.fixtures.waiting import WaitTimedOut, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

#: The workload: 2,000 records (1,600 accounts, 400 contacts), 500 changes, 60 deletes;
#: ``CHAOS_SCALE`` (default 1) multiplies it and the span, for a quick look while debugging.
SCALE = float(os.environ.get("CHAOS_SCALE", "1"))
ACCOUNTS, CONTACTS, PATCHES, DELETES = (round(n * SCALE) for n in (1600, 400, 500, 60))
SPAN = 45.0 * SCALE  # seconds the workload and the faults last
SETTLE_TIMEOUT = 60.0  # for the flow to drain once every fault has ended



def fault_kinds() -> tuple[list[str], list[str]]:
    """The infrastructure and third-party kinds of the run: all, or those named in
    ``CHAOS_FAULTS`` (comma-separated, e.g. ``kill-pusher,http-999``: to bisect)."""
    infra, http = [*SHARED_BROKER_FAULTS, *OWN_NODE_FAULTS], list(HTTP_FAULTS)
    chosen = [k.strip() for k in os.environ.get("CHAOS_FAULTS", "").split(",") if k.strip()]
    if chosen:
        unknown = set(chosen) - set(infra) - set(http)
        assert not unknown, f"CHAOS_FAULTS names unknown kinds {sorted(unknown)}"
        infra, http = [k for k in infra if k in chosen], [k for k in http if k in chosen]
    return infra, http


def test_no_record_lost_duplicated_or_stuck_under_chaos(
        chaos_stack: ChaosStack, chaos_broker: RabbitNode, chaos_seed: int,
        network: NetworkLoop, db_proxy: TcpProxy) -> None:
    stack = chaos_stack
    assert stack.crm is not None and stack.sandbox is not None
    http_proxy = HttpFaultProxy(network, "127.0.0.1", stack.crm.port, seed=chaos_seed,
                                hold_seconds=2.0).start()
    tenant = stack.tenant(CHAOS_CONNECTOR, http_proxy.url,
                          credentials={"apiKey": "env:ACME_KEY"},
                          permissions={"account": FULL_PUSH, "contact": FULL_PUSH})
    plan = make_plan(chaos_seed, ACCOUNTS, CONTACTS, PATCHES, DELETES)
    infra, http = make_schedule(chaos_seed, SPAN, *fault_kinds())
    faults = FaultRunner(stack, db_proxy, http_proxy, chaos_broker)
    writer = Writer(stack.sandbox.url, stack.config.bss_token or "", tenant.org_id)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            writer.play(plan, SPAN, faults.stop)
        except BaseException as exc:  # re-raised below, in the test's thread
            failures.append(exc)

    writing = threading.Thread(target=write, name="chaos-writer", daemon=True)
    started = time.monotonic()
    try:
        writing.start()
        faults.start_http(http)
        faults.play_infra(infra)  # here: processes started from a thread die with it
        writing.join()
    finally:
        faults.heal()
        writer.close()
    if failures:
        raise failures[0]
    wrote = time.monotonic() - started

    moving: list[str] = []

    def drained() -> bool:
        moving[:] = in_flight(snapshot(stack, stack.direct_database_url, tenant))
        return not moving

    with contextlib.suppress(WaitTimedOut):  # the reconciliation below says what is wrong
        wait_until(drained, timeout=SETTLE_TIMEOUT, interval=2.0,
                   what="the flow to drain", state=lambda: "; ".join(moving))
    settling = time.monotonic() - started - wrote
    for name in (PUSHER, DISPATCHER):  # gracefully: in-flight work finishes, acks flush
        stack.services[name].stop()
    final = reconcile(snapshot(stack, stack.direct_database_url, tenant))

    lines = [f"chaos run CHAOS_SEED={chaos_seed}: {len(plan)} writes in {wrote:.0f} s "
             f"({writer.retries} BSS write retries), "
             f"{'drained' if not moving else 'NOT drained (' + '; '.join(moving) + ')'} "
             f"{settling:.0f} s later",
             f"third-party faults injected: {dict(http_proxy.injected)} of "
             f"{http_proxy.requests} requests; PostgreSQL proxy: {db_proxy.accepted} "
             f"connections, {db_proxy.cuts} cuts, {db_proxy.refused} refused",
             "schedule played:", *(f"  {p}" for p in faults.played)]
    print("\n".join([*lines, str(final)]))
    assert not faults.errors, "faults that could not be played:\n" + "\n".join(
        str(p) for p in faults.errors)
    assert final.ok, "\n".join([*lines, "reconciliation:", str(final)])
