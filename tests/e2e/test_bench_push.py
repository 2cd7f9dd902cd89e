"""``bench/push.py`` with a tiny count: it runs to the end, prints its two figures by
name — drain and end to end — each counting every account created and beside the
command that reproduces it, and a CPU table of the run's own processes, on this
session's broker (``--broker shared``: RabbitMQ's column says machine-wide) and
PostgreSQL server. Nothing here is timed: the benchmark prints figures, this only
checks that it still measures what it says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from demo.thirdparty import REPO
from tests.fixtures.amqp import RabbitServer

pytestmark = pytest.mark.e2e

RECORDS = 150


def test_the_push_benchmark_prints_a_drain_and_an_end_to_end_figure_of_what_it_created(
        rabbitmq: RabbitServer, amqp_url: str, postgres_server_url: str) -> None:
    env = {**os.environ, "AMQP_URL": amqp_url, "DATABASE_URL": postgres_server_url,
           "MANAGEMENT_URL": rabbitmq.management_url}
    started = time.monotonic()
    run = subprocess.run([sys.executable, str(REPO / "bench" / "push.py"), "--records",
                          str(RECORDS), "--pass", "delay=0,concurrency=16,pushers=1",
                          "--broker", "shared"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = run.stdout
    assert run.returncode == 0, f"{out}\n{run.stderr[-3000:]}"

    command = (f".venv/bin/python bench/push.py --records {RECORDS} "
               "--pass delay=0,concurrency=16,pushers=1 --broker shared")
    drain = out.split("\ndrain: ", 1)[1].split("\nend to end: ", 1)[0]
    end_to_end = out.split("\nend to end: ", 1)[1].split("\nlatency ", 1)[0]
    # the drain starts at the first account pushed: the ones before are not in it
    assert re.match(r"[\d,]+ records/s \((\d+) created in [\d.]+ s; events preloaded while "
                    r"the services were down, from the first account pushed to the last "
                    r"created audit row\)\n", drain), drain
    assert re.match(rf"[\d,]+ records/s \({RECORDS} created in [\d.]+ s; accounts written to "
                    r"the BSS while the services ran, from the first BSS write to the last "
                    r"created audit row; the BSS took the writes in [\d.]+ s = [\d,]+ "
                    r"writes/s\)\n", end_to_end), end_to_end  # nothing else: none failed
    for section in (drain, end_to_end):
        assert f"  $ {command}\n" in section
        for process in ("dispatcher", "pusher", "sandbox", "third-party", "PostgreSQL",
                        "RabbitMQ (machine-wide)", "all of them"):
            assert re.search(rf"^  {re.escape(process)} +[\d.]+ +\d+% +[\d.]+", section,
                             re.MULTILINE), f"no figures for {process}:\n{section}"
        assert "PostgreSQL's CPU by client, ms per record: bss-sync " in section
    summary = out.split("== figures: only the pusher's created audit rows count ==\n", 1)[1]
    assert re.search(r"^delay=0 ms, 1 pusher\(s\) x 16: drain [\d,]+ records/s \(\d+ created, "
                     rf"[\d.]+ s\)   \$ {re.escape(command)}$", summary, re.MULTILINE), summary
    assert re.search(r"^delay=0 ms, 1 pusher\(s\) x 16: end to end [\d,]+ records/s "
                     rf"\({RECORDS} created, [\d.]+ s\)   \$ {re.escape(command)}$", summary,
                     re.MULTILINE), summary
    print(f"bench/push.py --records {RECORDS}: {time.monotonic() - started:.0f} s")
