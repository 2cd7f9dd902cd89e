"""``bench/pull.py`` with a tiny count: it runs to the end and its figures count what was
pulled — every company listed, published, created, then changed and updated — on this
session's broker (``--broker shared``) and PostgreSQL server. Nothing here is timed: the
benchmark prints figures, this only checks that it still measures what it says.
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

RECORDS = 200
PAGE_SIZE = 50


def test_the_pull_benchmark_completes_and_counts_every_record_pulled(
        rabbitmq: RabbitServer, amqp_url: str, postgres_server_url: str) -> None:
    env = {**os.environ, "AMQP_URL": amqp_url, "DATABASE_URL": postgres_server_url,
           "MANAGEMENT_URL": rabbitmq.management_url}
    options = ["--records", str(RECORDS), "--page-size", str(PAGE_SIZE), "--pullers", "1",
               "--concurrency", "16", "--bss-writes", "20", "--broker", "shared"]
    started = time.monotonic()
    run = subprocess.run([sys.executable, str(REPO / "bench" / "pull.py"), *options], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    out = run.stdout
    assert run.returncode == 0, f"{out}\n{run.stderr[-3000:]}"

    # the command that reproduces the figures, every option explicit
    command = (f".venv/bin/python bench/pull.py --records {RECORDS} --page-size {PAGE_SIZE} "
               "--pullers 1 --concurrency 16 --passes new,changed --bss-writes 20 "
               "--broker shared")
    assert out.count(f"$ {command}\n") == 2
    assert re.search(r"the sandbox BSS alone, 16 callers .*: [\d,]+ creates/s, [\d,]+ read \+ "
                     r"merge patch/s \(20 each\)", out)
    pages = RECORDS // PAGE_SIZE + 1  # json-server paging ends on an empty page
    for expected in ("created", "updated"):
        section = out.split(f"→ {expected} in the BSS ==", 1)[1].split("\n== ", 1)[0]
        assert f"discovery: {RECORDS} companies published in {pages} list requests " \
               "(0 single reads)" in section
        assert re.search(rf"listing: [\d,]+ records/s \({RECORDS} published and confirmed, ",
                         section)
        assert re.search(rf"end to end: [\d,]+ records/s \({RECORDS} {expected} audit rows, "
                         r"from launching `bss-sync pull` to the last of them, [\d.]+ s\)\n",
                         section), section  # no other puller rows: nothing failed or waited
        for process in ("discovery (bss-sync pull", "stand-in", "puller", "sandbox",
                        "PostgreSQL", "all of them"):
            assert re.search(rf"^{re.escape(process)}.* [\d.]+ +\d+% +[\d.]+", section,
                             re.MULTILINE), f"no figures for {process}:\n{section}"
    assert f"pass new: {RECORDS} records; listing " in out
    assert f"pass changed: {RECORDS} records; listing " in out
    print(f"bench/pull.py --records {RECORDS}: {time.monotonic() - started:.0f} s")
