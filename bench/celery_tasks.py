"""The peer of ``bench/e2e.py``: the push of one account written as Celery tasks, the way
a Celery user would write it, against the same stand-ins as bss-sync.

* ``lean`` — POST the company to the third party, INSERT an audit row;
* ``same_work`` — what bss-sync's pusher does for a new account: GET the account from
  the BSS API, GET the third party's match (``?accountNumber=``), POST the company,
  upsert the link, INSERT the audit row.

Configured from the environment (``bench/e2e.py`` sets it): ``BENCH_AMQP_URL``,
``BENCH_DATABASE_URL``, ``BENCH_BSS_URL``, ``BENCH_THIRD_PARTY_URL``. Reliability as
Celery's documentation advises for work that must not be lost: ``acks_late``, a
rejected (requeued) task when a worker dies, and transport errors retried with a
countdown. Under the gevent pool the broker heartbeat is off (``broker_heartbeat=0``):
with it, the pool manages ~10 tasks/s here (psycopg and requests cooperate through
gevent's patched sockets). One HTTP client and one PostgreSQL pool (32) per worker process.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
import requests
from celery import Celery
from psycopg_pool import ConnectionPool

app = Celery("bench", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1//"))
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=4,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)
if os.environ.get("BENCH_POOL") == "gevent":
    app.conf.broker_heartbeat = 0

AUDIT = ("INSERT INTO bench_audit (task, record_id, external_id, outcome)"
         " VALUES (%s, %s, %s, %s)")
#: Transport failures a Celery user retries (with a countdown) rather than lose the task.
RETRIED = (requests.ConnectionError, requests.Timeout, psycopg.OperationalError)
_shared: dict[str, Any] = {}
_lock = threading.Lock()


def _http() -> requests.Session:
    """One session per worker process, shared by its threads or greenlets (a session per
    greenlet — ``threading.local`` under gevent — would build a pool per task). requests
    (urllib3's pool) rather than httpx: what Celery users reach for, and httpcore's pool
    walks every connection on each response, which 200 greenlets turn into ~10 tasks/s."""
    with _lock:
        if "http" not in _shared:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=256)
            session.mount("http://", adapter)
            _shared["http"] = session
        return _shared["http"]


def _db() -> ConnectionPool:
    """One pool per worker process (created after the prefork pool forks)."""
    with _lock:
        if "db" not in _shared:
            _shared["db"] = ConnectionPool(os.environ["BENCH_DATABASE_URL"], min_size=1,
                                           max_size=32, kwargs={"autocommit": True},
                                           open=True)
        return _shared["db"]


def _company(account: dict[str, Any]) -> dict[str, Any]:
    return {"name": account["name"], "accountNumber": account.get("code"),
            "email": account.get("email"), "bssId": account["id"]}


@app.task(bind=True, autoretry_for=RETRIED, retry_backoff=1, max_retries=10)
def lean(self: Any, account: dict[str, Any]) -> None:
    base = os.environ["BENCH_THIRD_PARTY_URL"]
    response = _http().post(f"{base}/companies", json=_company(account), timeout=30)
    response.raise_for_status()
    with _db().connection() as conn:
        conn.execute(AUDIT, ("lean", account["id"], str(response.json()["id"]), "created"))


@app.task(bind=True, autoretry_for=RETRIED, retry_backoff=1, max_retries=10)
def same_work(self: Any, org: str, record_id: str) -> None:
    http, base = _http(), os.environ["BENCH_THIRD_PARTY_URL"]
    read = http.get(f"{os.environ['BENCH_BSS_URL']}/organizations/{org}/account/{record_id}",
                    timeout=30)
    read.raise_for_status()
    account = read.json()
    match = http.get(f"{base}/companies", params={"accountNumber": account.get("code")},
                     timeout=30)
    match.raise_for_status()
    created = http.post(f"{base}/companies", json=_company(account), timeout=30)
    created.raise_for_status()
    external_id = str(created.json()["id"])
    with _db().connection() as db:
        db.execute("INSERT INTO bench_links (record_id, external_id) VALUES (%s, %s)"
                   " ON CONFLICT (record_id) DO UPDATE SET external_id ="
                   " EXCLUDED.external_id, updated_at = now()", (record_id, external_id))
        db.execute(AUDIT, ("same_work", record_id, external_id, "created"))
