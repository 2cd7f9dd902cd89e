"""A nightly run, end to end: N changed BSS accounts pushed out, then N changed
third-party companies pulled in, by one run (``python -m services.dispatcher.run``, what
the scheduler and ``bss-sync sync`` execute) with the pushers and the puller running.

    sandbox BSS ─listing─▶ run (push phase) ─▶ sync.push ─▶ pusher(s) ─▶ stand-in CRM
    stand-in CRM ─listing─▶ run (pull phase) ─▶ sync.pull ─▶ puller ─▶ sandbox BSS

Set-up (not timed): the sandbox BSS holds N accounts the instance never pushed (written
through its API; their events are left in ``dispatcher.events``, no dispatcher runs),
the stand-in third party (``bench/standin.py``) N companies the BSS never saw. The
instance pushes and pulls accounts. Then one run, timed from its ``runs`` row:

* push phase: ``started_at`` → ``push_settled_at`` (every push message of the run has
  its final audit row); records/s counts the pusher's ``created`` rows of the run only;
* pull phase: ``push_settled_at`` → ``finished_at`` (the discovery, then every pull
  message of the run settled); records/s counts the puller's ``created`` rows only;
* the whole run: ``started_at`` → ``finished_at``.

Target on this 2-core machine: 20,000 + 20,000 in under 60 s. Asserts nothing; its own
database and RabbitMQ node (``bench/pull.py``'s harness), dropped at the end.

    .venv/bin/python bench/run.py [--records 20000] [--pushers 2] [--concurrency 128]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pull import INSTANCE, ORG, Bench, exit_on_sigterm  # noqa: E402
from shared.bss import BssClient  # noqa: E402
from shared.messaging.topology import DISPATCHER, PUSHER  # noqa: E402


class RunBench(Bench):
    def permissions(self) -> dict[str, Any]:
        return {"account": {"push": ["create", "update"], "pull": ["create", "update"]}}

    def seed_bss(self) -> float:
        """N accounts in the sandbox BSS, 64 writes in flight; seconds it took."""
        assert self.sandbox is not None
        bss = BssClient(self.sandbox.url, batch_reads=False)

        async def seed() -> float:
            numbers = list(range(self.records))
            started = time.perf_counter()

            async def worker() -> None:
                while numbers:
                    i = numbers.pop()
                    await bss.create(ORG, "account", {
                        "name": f"Nightly {i}", "code": f"NIGHT-{i:06d}", "type": "customer",
                        "currency": "EUR", "email": f"billing{i}@nightly.example"},
                        origin="bench-seed", idempotency_key=str(uuid.uuid4()))

            try:
                await asyncio.gather(*(worker() for _ in range(64)))
            finally:
                await bss.aclose()
            return time.perf_counter() - started

        return asyncio.run(seed())

    def start_pushers(self) -> None:
        for n in range(self.args.pushers):
            self.start(PUSHER if n == 0 else f"{PUSHER}-{n + 1}", ["-m", "services.pusher"],
                       BSS_API_URL=self.sandbox.url if self.sandbox else "",
                       CONCURRENCY=str(self.args.concurrency))

    def nightly(self) -> dict[str, Any]:
        run_id = str(uuid.uuid4())
        started = time.time()
        process = self.start(DISPATCHER, ["-m", "services.dispatcher.run", "--instance", INSTANCE,
                                     "--run-id", run_id],
                             BSS_API_URL=self.sandbox.url if self.sandbox else "")
        deadline = time.monotonic() + max(600, self.records / 20)
        while process.poll() is None:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("the run did not finish in time")
            time.sleep(0.25)
        wall = time.time() - started
        with self.bench_db() as conn:
            run = conn.execute(
                "SELECT status, error, counts, extract(epoch FROM started_at),"
                " extract(epoch FROM push_settled_at), extract(epoch FROM finished_at)"
                " FROM runs WHERE id = %s", (run_id,)).fetchone()
            rows = conn.execute(
                "SELECT service, outcome, count(DISTINCT message_id) FROM audit_log"
                " WHERE run_id = %s AND outcome <> 'retrying' GROUP BY service, outcome",
                (run_id,)).fetchall()
        assert run is not None, f"no run {run_id}; see {self.tmp / (DISPATCHER + '.log')}"
        status, error, counts, t0, t_push, t_end = run
        outcomes = {f"{s}.{o}": int(n) for s, o, n in rows}
        return {"status": status, "error": error, "counts": counts, "wall": wall,
                "push": float(t_push) - float(t0), "pull": float(t_end) - float(t_push),
                "total": float(t_end) - float(t0), "outcomes": outcomes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000,
                        help="accounts changed on each side (default 20,000)")
    parser.add_argument("--pushers", type=int, default=2, help="pusher processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="handlers per pusher and puller (default 128)")
    parser.add_argument("--page-size", type=int, default=100,
                        help="the stand-in listing's page size (default 100)")
    args = parser.parse_args()
    # bench/pull.py's options this benchmark does not vary
    args.read, args.pullers, args.broker, args.bss_writes = False, 1, "own", 0
    command = "python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    exit_on_sigterm()
    bench = RunBench(args)
    try:
        bench.setup()
        seeded = bench.seed_bss()
        print(f"set-up: {args.records:,} accounts written to the sandbox BSS in {seeded:.1f} s "
              f"(not timed); {args.records:,} companies on the stand-in")
        bench.start_pushers()
        bench.start_pullers()
        result = bench.nightly()
    finally:
        bench.teardown()
    out = result["outcomes"]
    pushed, pulled = out.get("pusher.created", 0), out.get("puller.created", 0)
    print(f"\n$ {command}")
    print(f"nightly run: {result['status']}"
          + (f" ({result['error']})" if result["error"] else ""))
    print(f"  push phase (run start → every push settled): {result['push']:6.1f} s, "
          f"{pushed:,} accounts created in the third party: {pushed / result['push']:,.0f}/s")
    print(f"  pull phase (pushes settled → every pull settled): {result['pull']:6.1f} s, "
          f"{pulled:,} companies created in the BSS: {pulled / result['pull']:,.0f}/s")
    print(f"  whole run: {result['total']:.1f} s for {pushed + pulled:,} records "
          f"({(pushed + pulled) / result['total']:,.0f}/s); process wall {result['wall']:.1f} s")
    print(f"  every final outcome of the run's messages: {out}")


if __name__ == "__main__":
    main()
