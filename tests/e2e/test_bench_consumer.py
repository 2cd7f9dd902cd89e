"""``bench/consumer.py`` with a tiny count: every consumer runs with one prefetch, and
(c) prints the prefetch and concurrency the runtime ran with — read from the runtime,
so a ``--concurrency`` of 16 shows the runtime's own 4 x 16 = 64 — and its share of
the limit they set; (b') runs the same runtime with an audit sink that stores nothing;
beside (a), (b) and (b'), the CPU a message of each party, PostgreSQL's counted on the
benchmark's own database only (nothing for the raw consumer nor for (b'), while the
other test worker keeps the server busy). Nothing here is timed: the benchmark prints
figures, this only checks that it still says what it measured.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from demo.thirdparty import REPO
from tests.fixtures.amqp import RabbitServer

pytestmark = pytest.mark.e2e


def test_the_consumer_benchmark_says_the_flow_the_runtime_ran_with(
        rabbitmq: RabbitServer, amqp_url: str, postgres_server_url: str) -> None:
    env = {**os.environ, "AMQP_URL": amqp_url, "DATABASE_URL": postgres_server_url,
           "MANAGEMENT_URL": rabbitmq.management_url}
    run = subprocess.run([sys.executable, str(REPO / "bench" / "consumer.py"), "--messages",
                          "400", "--rounds", "1", "--publish", "200", "--concurrency", "16"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = run.stdout
    assert run.returncode == 0, f"{out}\n{run.stderr[-3000:]}"

    assert "prefetch: 64 (every consumer), concurrency: 16" in out
    assert re.search(r"^\(a\) raw pika, batched acks +[\d,]+ msg/s   connect → last ack sent",
                     out, re.MULTILINE), out
    assert re.search(r"^\(b\) runtime, no-op \+ audit rows +[\d,]+ msg/s   start → last ack, "
                     r"each after its audit row committed .*; 400 audit rows\)$", out,
                     re.MULTILINE), out
    assert re.search(r"^    \(b\)/\(a\) = \d+% of the best raw consumer \(target: at least "
                     r"50 %\)$", out, re.MULTILINE), out
    assert re.search(r"^\(b'\) runtime, rows to memory only +[\d,]+ msg/s   start → last ack, "
                     r"each after its row was fitted and serialised, no PostgreSQL \(median of "
                     r"[\d,]+\)\n    context: \(b'\)/\(a\) = \d+%, the runtime without the audit "
                     r"log; \(b\)/\(b'\) = \d+%, what committing the rows leaves of it$",
                     out, re.MULTILINE), out
    table = re.search(r"^    CPU a message, all rounds +our process +PostgreSQL \(own database\) +"
                      r"RabbitMQ \(machine-wide\) +machine busy \(CPUs\)\n"
                      r"    \(a\) +([\d,]+) µs +([\d,]+) µs +([\d,]+) µs +[\d.]+ of (\d+)\n"
                      r"    \(b\) +([\d,]+) µs +([\d,]+) µs +([\d,]+) µs +[\d.]+ of (\d+)\n"
                      r"    \(b'\) +([\d,]+) µs +([\d,]+) µs +([\d,]+) µs +[\d.]+ of (\d+)$",
                      out, re.MULTILINE)
    assert table, out
    (ours_a, postgres_a, _, cpus, ours_b, _, _, _, ours_bare, postgres_bare, _,
     _) = (int(x.replace(",", "")) for x in table.groups())
    assert ours_a > 0 and ours_b > 0 and ours_bare > 0, out
    assert postgres_a == 0, f"the raw consumer uses no PostgreSQL, yet was charged some:\n{out}"
    assert postgres_bare == 0, f"(b') stores nothing, yet was charged PostgreSQL:\n{out}"
    assert cpus == os.cpu_count(), out
    assert re.search(r"^\(c\) runtime, 50 ms handler +[\d,]+ msg/s   start → last ack \(1,000 "
                     r"messages; ran with prefetch 64, concurrency 16: \d+% of their limit, "
                     r"16 / 50 ms = 320 msg/s\)$", out, re.MULTILINE), out
    assert re.search(r"^\(d\) publish with confirms +[\d,]+ msg/s   first publish → last "
                     r"confirm \(200 messages\)$", out, re.MULTILINE), out
