"""The pull path end to end, real processes: json-server (the Acme CRM) listed by pull
discovery (``bss-sync pull``, the dispatcher's discovery in a process of its own), the
puller (``python -m services.puller``) writing into the sandbox BSS — RabbitMQ and
PostgreSQL real, nothing of ours replaced.

* 1,000 companies, pages of 50 → each exactly once in the BSS with its link; changes
  reach the BSS records they are linked to; a discovery with no changes writes nothing.
* The discovery SIGKILLed mid-way: ``bss-sync pull`` again continues at the first page
  not wholly confirmed and marks the killed run failed; nothing missed or duplicated.
* The puller SIGKILLed during 500 creates: exactly 500 BSS records.
* A company breaking the canonical schema → ``puller.dead`` with its JSON pointer; the
  BSS answering 503 → retried, then synced.
* A contact whose company is not linked: pulled first when the connector can read one
  company (``pull.read``); otherwise the contact waits and is linked once its company
  is pulled.

The instances here may pull only (no push permission): the BSS's events of pulled
writes are not pushed back, so nothing here depends on the loop guard.

Two fault proxies (``tests/e2e/thirdparty.py``) sit on the paths: the instances' server
is a proxy in front of json-server (to slow the listing down), the puller's
``BSS_API_URL`` a proxy in front of the sandbox (to answer 503).
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kombu import Connection
from psycopg.rows import dict_row

from demo.processes import LoggedProcess, Service
from demo.thirdparty import JsonServer
from demo.waiting import wait_until
from shared.messaging.amqp_url import kombu_hostname
from shared.messaging.topology import PULLER, WorkQueue
from tests.e2e.conftest import make_stack
from tests.e2e.records import ACME_CONNECTOR
from tests.e2e.stack import ACME_API_KEY, Connector, Tenant, TestStack
from tests.e2e.thirdparty import FaultProxy, Seen

pytestmark = pytest.mark.e2e

PAGE_SIZE = 50
#: A ladder of ~30 s: contacts wait on it for their company's discovery, which a busy
#: machine may take seconds to start (the other e2e modules' ladder is 7 s).
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)
PULLER_QUEUES = WorkQueue(PULLER, RETRY_DELAYS)
PULLER_DEAD = PULLER_QUEUES.dead_queue
FULL_PULL = {"pull": ["create", "update", "delete"]}
FINAL = ("created", "updated", "deleted", "unchanged", "skipped", "dead")
WAIT = 120.0
#: The connectors of the module: acme-crm.json listing companies 50 a page, and the
#: same without ``pull.read`` for companies (one company cannot be read by id).
PAGED, LIST_ONLY = "acme-crm-paged", "acme-crm-list-only"


def paged_connector(workdir: Path, *, readable: bool) -> Path:
    document = json.loads(ACME_CONNECTOR.read_text())
    account = document["x-synchronization"]["objects"]["Account"]["pull"]
    account["list"]["pagination"]["size"] = PAGE_SIZE
    if not readable:
        del account["read"]
    path = workdir / f"{PAGED if readable else LIST_ONLY}.json"
    path.write_text(json.dumps(document, indent=2))
    return path


class PullWorld:
    """The module's stack (sandbox BSS, json-server, the puller) and its two proxies."""

    def __init__(self, stack: TestStack, crm: JsonServer, crm_proxy: FaultProxy,
                 bss_proxy: FaultProxy) -> None:
        self.stack = stack
        self.crm = crm
        self.crm_proxy = crm_proxy
        self.bss_proxy = bss_proxy
        # one connection, held: the tests poll often, and the server's connections are
        # shared with every other suite running on it
        self.conn = psycopg.connect(stack.database_url, row_factory=dict_row, autocommit=True)

    @property
    def puller(self) -> Service:
        return self.stack.services[PULLER]

    def tenant(self, connector: str = PAGED) -> Tenant:
        """A new organization whose instance pulls accounts and contacts from the CRM
        (through the proxy)."""
        return self.stack.tenant(connector, self.crm_proxy.url,
                                 credentials={"apiKey": "env:ACME_KEY"},
                                 permissions={"account": FULL_PULL, "contact": FULL_PULL})

    # -- the CRM ---------------------------------------------------------------------------

    def create(self, collection: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST every body to json-server directly (8 at a time); the stored records."""
        def post(body: dict[str, Any]) -> dict[str, Any]:
            response = self.crm.http.post(f"/{collection}", json=body)
            response.raise_for_status()
            return response.json()

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(post, bodies))

    def change(self, collection: str, record_id: int, changes: dict[str, Any]) -> None:
        self.crm.http.patch(f"/{collection}/{record_id}", json=changes).raise_for_status()

    # -- discovery -------------------------------------------------------------------------

    def pull(self, tenant: Tenant, *args: str) -> tuple[str, str]:
        """``bss-sync pull --instance ID --wait ARGS``: (run id, its output)."""
        result = self.stack.cli(["pull", "--instance", tenant.instance_id, "--wait", *args])
        found = re.search(r"^run (\S+): (\d+) messages published", result.stdout, re.M)
        assert found, result.stdout
        return found.group(1), result.stdout

    # -- what the puller did -----------------------------------------------------------------

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        return self.conn.execute(query, params).fetchall()

    def rows(self, tenant: Tenant, **where: Any) -> list[dict[str, Any]]:
        """The puller's audit rows of the tenant (oldest first), ``where`` column = value."""
        query = ("SELECT * FROM audit_log WHERE instance_id = %s AND service = 'puller'")
        params: list[Any] = [tenant.instance_id]
        for column, value in where.items():
            query += f" AND {column} = %s"
            params.append(value)
        return self.sql(query + " ORDER BY at, id", *params)

    def outcomes(self, tenant: Tenant, **where: Any) -> Counter[str]:
        return Counter(r["outcome"] for r in self.rows(tenant, **where))

    def settled(self, tenant: Tenant, run_id: str, published: int) -> list[dict[str, Any]]:
        """The final rows of the ``published`` messages of run ``run_id``, once every
        one has its final row."""
        def final() -> list[dict[str, Any]]:
            found = [r for r in self.rows(tenant, run_id=run_id) if r["outcome"] in FINAL]
            return found if len(found) >= published else []

        return wait_until(final, timeout=WAIT, interval=0.25,
                          what=f"the puller to settle the {published} messages of run {run_id}",
                          state=lambda: self.outcomes(tenant, run_id=run_id),
                          between=self.stack.check_processes)

    def quiet(self, tenant: Tenant) -> None:
        """Until no pull message of the tenant is queued or waiting to be retried, and
        every message the puller saw has its final row."""
        names = [PULLER_QUEUES.name, *(q.name for q in PULLER_QUEUES.retry_queues)]

        def unfinished() -> list[str]:
            last: dict[str, str] = {}
            for row in self.rows(tenant):
                last[row["message_id"]] = row["outcome"]
            return [m for m, outcome in last.items() if outcome not in FINAL]

        wait_until(lambda: not unfinished() and _passive_count(self.stack, names) == 0,
                   timeout=WAIT, interval=0.25, what="the puller's queues to drain",
                   state=lambda: f"{len(unfinished())} messages not final; "
                                 f"{self.outcomes(tenant)}",
                   between=self.stack.check_processes)

    def bss_records(self, tenant: Tenant, entity: str) -> list[dict[str, Any]]:
        """Every record of the tenant's organization in the sandbox BSS (following the
        listing's cursor)."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            response = self.stack.bss.http.get(f"/organizations/{tenant.org_id}/{entity}",
                                               params=params)
            response.raise_for_status()
            page = response.json()
            found.extend(page["items"])
            cursor = page.get("nextCursor")
            if not cursor:
                return found

    def links(self, tenant: Tenant, entity: str) -> list[dict[str, Any]]:
        return self.sql("SELECT * FROM links WHERE instance_id = %s AND entity = %s"
                        " ORDER BY id", tenant.instance_id, entity)

    def failure_report(self) -> list[tuple[str, str]]:
        seen = Counter((s.method, s.status, s.fault) for s in self.bss_proxy.requests())
        return [*self.stack.process_logs(),
                ("BSS proxy requests (method, status, fault)",
                 "\n".join(f"{k}: {n}" for k, n in sorted(seen.items(), key=str)))]


def _passive_count(stack: TestStack, names: list[str]) -> int:
    """Ready messages in ``names`` (AMQP passive declares: exact, not the management
    API's sampled figures). Unacked ones are covered by the audit check beside it."""
    with Connection(kombu_hostname(stack.amqp_url), connect_timeout=5) as conn:
        channel = conn.default_channel
        return sum(channel.queue_declare(name, passive=True).message_count for name in names)


@pytest.fixture(scope="module")
def pull_world(request: pytest.FixtureRequest, node_tools: None,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[PullWorld]:
    workdir = tmp_path_factory.mktemp("connectors")
    stack = make_stack(request, [Connector(PAGED, [paged_connector(workdir, readable=True)]),
                                 Connector(LIST_ONLY,
                                           [paged_connector(workdir, readable=False)])],
                       {"ACME_KEY": ACME_API_KEY}, crm=True, services=(),
                       retry_delays=RETRY_DELAYS)
    assert stack.crm is not None and stack.sandbox is not None
    crm_proxy = FaultProxy(stack.crm.url).start()
    bss_proxy = FaultProxy(stack.sandbox.url).start()
    try:
        puller = Service(PULLER, {**stack.env, "BSS_API_URL": bss_proxy.url}, stack.workdir)
        stack.services[PULLER] = puller
        puller.start()
        world = PullWorld(stack, stack.crm, crm_proxy, bss_proxy)
        yield world
    finally:
        if "world" in locals():
            world.conn.close()
        stack.stop()  # the puller first: it talks through the proxies
        crm_proxy.stop()
        bss_proxy.stop()


@pytest.fixture
def world(pull_world: PullWorld) -> PullWorld:
    """An empty CRM, proxies passing everything through, an empty ``puller.dead``."""
    pull_world.crm.reset()
    pull_world.crm_proxy.reset()
    pull_world.bss_proxy.reset()
    pull_world.stack.purge(PULLER_DEAD)
    if not pull_world.puller.alive:
        pull_world.puller.start()
    return pull_world


def companies(count: int, tag: str) -> list[dict[str, Any]]:
    """``count`` valid Acme companies (account numbers unique to ``tag``)."""
    return [{"name": f"Company {tag} {n}", "accountNumber": f"{tag}-{n:05d}",
             "email": f"billing{n}@{tag.lower()}.example", "kind": "CUSTOMER",
             "currency": "EUR", "parentCompanyId": None}
            for n in range(count)]


def listing(seen: Seen) -> bool:
    return seen.method == "GET" and seen.path == "/companies"


# --------------------------------------------------------------------------- the tests


def test_a_thousand_companies_arrive_once_each_and_a_quiet_discovery_writes_nothing(
        world: PullWorld) -> None:
    tenant = world.tenant()
    crm = world.create("companies", companies(1000, "K"))

    run_id, output = world.pull(tenant, "--entity", "account")

    assert re.search(rf"^Account \(account\): 1000 published of 1000 listed, "
                     rf"{1000 // PAGE_SIZE + 1} pages", output, re.M), output
    assert "1000 by external id only" in output  # Account declares pull.read
    rows = world.settled(tenant, run_id, 1000)
    assert Counter(r["outcome"] for r in rows) == {"created": 1000}
    records = world.bss_records(tenant, "account")
    assert len(records) == 1000
    by_code = {r["code"]: r for r in records}
    assert sorted(by_code) == sorted(c["accountNumber"] for c in crm)
    links = world.links(tenant, "account")
    assert {(link["external_id"], link["bss_id"], link["state"]) for link in links} == {
        (str(c["id"]), by_code[c["accountNumber"]]["id"], "linked") for c in crm}
    assert {r["external_id"]: r["record_id"] for r in rows} == {
        link["external_id"]: link["bss_id"] for link in links}

    # Changes on the CRM side reach the linked BSS records, and only those are written.
    renamed = {c["id"]: f"{c['name']} (renamed in the CRM)" for c in crm[::100]}
    for company_id, name in renamed.items():
        world.change("companies", company_id, {"name": name})
    run_id, output = world.pull(tenant, "--entity", "account")
    published = int(re.search(r"(\d+) messages published", output).group(1))
    rows = world.settled(tenant, run_id, published)
    assert Counter(r["outcome"] for r in rows) == {"updated": len(renamed),
                                                   "unchanged": published - len(renamed)}
    versions = {r["id"]: r["updatedAt"] for r in world.bss_records(tenant, "account")}
    after = {r["code"]: r for r in world.bss_records(tenant, "account")}
    assert len(after) == 1000
    for company in crm:
        expected = renamed.get(company["id"], company["name"])
        assert after[company["accountNumber"]]["name"] == expected

    # One write a record or change, and a write again only for one the puller audited as
    # retried (an answer that did not come in time on a loaded machine: the create's key
    # made it the same record, counted above).
    def retried(method: str) -> int:
        return sum(1 for r in world.rows(tenant) if r["outcome"] == "retrying"
                   and f"{method} /" in (r["error_message"] or ""))

    posts, patches = world.bss_proxy.count("POST"), world.bss_proxy.count("PATCH")
    assert 1000 <= posts <= 1000 + retried("POST"), world.outcomes(tenant)
    assert len(renamed) <= patches <= len(renamed) + retried("PATCH"), world.outcomes(tenant)

    # Nothing changed since: a discovery lists the overlap again and writes nothing.
    run_id, output = world.pull(tenant, "--entity", "account")
    published = int(re.search(r"(\d+) messages published", output).group(1))
    assert published > 0, output  # the overlap window re-lists what was just synced
    rows = world.settled(tenant, run_id, published)
    assert Counter(r["outcome"] for r in rows) == {"unchanged": published}
    assert {r["id"]: r["updatedAt"] for r in world.bss_records(tenant, "account")} == versions
    assert (world.bss_proxy.count("POST"), world.bss_proxy.count("PATCH")) == (posts, patches)


def test_a_discovery_killed_mid_way_is_continued_by_the_next_one(world: PullWorld) -> None:
    tenant = world.tenant()
    crm = world.create("companies", companies(500, "R"))
    world.crm_proxy.slow_down(0.3, when=listing)  # ~3 s for the 11 pages
    run_id = str(uuid.uuid4())
    discovery = LoggedProcess(
        "discovery", [sys.executable, "-m", "services.dispatcher.pull", "--instance",
                      tenant.instance_id, "--entity", "account", "--run-id", run_id],
        world.stack.workdir / "discovery.log", env=world.stack.env)
    discovery.launch()
    try:
        def progress() -> int:
            rows = world.sql("SELECT pages FROM pull_cursors WHERE instance_id = %s",
                             tenant.instance_id)
            return rows[0]["pages"] if rows else 0

        pages = wait_until(lambda: progress() >= 3, timeout=WAIT, interval=0.02,
                           what="the discovery to confirm 3 pages",
                           state=discovery.tail)
        assert pages and discovery.alive, discovery.tail()
        discovery.kill()  # SIGKILL: no clean-up of any kind
    finally:
        discovery.stop()
    [cursor] = world.sql("SELECT * FROM pull_cursors WHERE instance_id = %s",
                         tenant.instance_id)
    confirmed = cursor["pages"]
    assert cursor["resume"] is not None and cursor["value"] is None
    assert confirmed < 500 // PAGE_SIZE, "the discovery finished before it was killed"
    [killed] = world.sql("SELECT status FROM runs WHERE id = %s", run_id)
    assert killed["status"] == "running"

    resumed, output = world.pull(tenant, "--entity", "account")

    assert f"resumed at page {confirmed + 1}" in output, output
    world.settled(tenant, resumed, int(re.search(r"(\d+) messages published",
                                                 output).group(1)))
    world.quiet(tenant)
    records = world.bss_records(tenant, "account")
    assert sorted(r["code"] for r in records) == sorted(c["accountNumber"] for c in crm)
    created = Counter(r["external_id"] for r in world.rows(tenant, outcome="created"))
    assert created == {str(c["id"]): 1 for c in crm}
    assert len(world.links(tenant, "account")) == 500
    [killed] = world.sql("SELECT status, error FROM runs WHERE id = %s", run_id)
    assert killed["status"] == "failed" and "interrupted" in killed["error"]
    [cursor] = world.sql("SELECT * FROM pull_cursors WHERE instance_id = %s",
                         tenant.instance_id)
    assert cursor["resume"] is None and cursor["value"] is not None
    listed = {int(s.query["_page"]) for s in world.crm_proxy.requests(listing)}
    assert listed == set(range(1, 500 // PAGE_SIZE + 2))


def test_the_puller_killed_during_500_creates_makes_exactly_500_records(
        world: PullWorld) -> None:
    tenant = world.tenant()
    crm = world.create("companies", companies(500, "P"))
    world.bss_proxy.slow_down(0.5, when=lambda s: s.method == "POST")  # creates in flight
    run_id, _ = world.pull(tenant, "--entity", "account")
    wait_until(lambda: len(world.rows(tenant, outcome="created")) >= 100, timeout=WAIT,
               interval=0.05, what="100 creates", between=world.stack.check_processes)

    world.puller.kill()
    killed_at = len(world.rows(tenant, outcome="created"))
    world.bss_proxy.clear_faults()
    world.puller.start()

    world.settled(tenant, run_id, 500)
    world.quiet(tenant)
    assert killed_at < 500, "the puller had finished before it was killed"
    records = world.bss_records(tenant, "account")
    assert len(records) == 500
    assert sorted(r["code"] for r in records) == sorted(c["accountNumber"] for c in crm)
    links = world.links(tenant, "account")
    assert len(links) == 500 and {link["state"] for link in links} == {"linked"}
    assert {link["bss_id"] for link in links} == {r["id"] for r in records}


def test_a_record_breaking_the_schema_is_dead_and_a_503_from_the_bss_is_retried(
        world: PullWorld) -> None:
    tenant = world.tenant()
    good, bad = world.create("companies", [*companies(1, "G"),
                                           {**companies(1, "B")[0], "email": "not an email"}])
    world.bss_proxy.fail_next(2, 503, when=lambda s: s.method == "POST")

    run_id, _ = world.pull(tenant, "--entity", "account")

    rows = world.settled(tenant, run_id, 2)
    final = {r["external_id"]: r for r in rows}
    assert final[str(bad["id"])]["outcome"] == "dead"
    assert final[str(bad["id"])]["error_class"] == "SchemaViolation"
    assert "/email: is not a valid email" in final[str(bad["id"])]["error_message"]
    dead = wait_until(lambda: world.stack.dead_letters(PULLER_DEAD), timeout=WAIT,
                      what=f"a message on {PULLER_DEAD}")
    [letter] = dead
    headers = letter["properties"]["headers"]
    assert (headers["x-error-class"], headers["x-instance-id"]) == ("SchemaViolation",
                                                                   tenant.instance_id)
    assert "/email: is not a valid email" in headers["x-error"]

    assert final[str(good["id"])]["outcome"] == "created"
    history = [(r["outcome"], r["http_status"])
               for r in world.rows(tenant, external_id=str(good["id"]))]
    assert history[:-1] and all(h == ("retrying", 503) for h in history[:-1]), history
    retrying = [r["error_message"] for r in world.rows(tenant, external_id=str(good["id"]))
                if r["outcome"] == "retrying"]
    assert all("POST /organizations/" in m for m in retrying), retrying  # what retried() reads
    [record] = world.bss_records(tenant, "account")
    assert (record["code"], record["id"]) == (good["accountNumber"],
                                              final[str(good["id"])]["record_id"])
    assert world.bss_proxy.count("POST") == 3  # two 503s, one create


def test_a_contact_whose_company_is_not_linked_pulls_it_first(world: PullWorld) -> None:
    tenant = world.tenant()
    [company] = world.create("companies", companies(1, "F"))
    [person] = world.create("people", [{"firstName": "Grace", "lastName": "Hopper",
                                        "email": "grace@f.example",
                                        "companyId": company["id"]}])

    run_id, output = world.pull(tenant, "--entity", "contact")

    assert "1 published of 1 listed" in output, output
    [row] = world.settled(tenant, run_id, 1)
    [account] = world.bss_records(tenant, "account")
    [contact] = world.bss_records(tenant, "contact")
    assert (row["outcome"], row["external_id"]) == ("created", str(person["id"]))
    assert contact["accountId"] == account["id"] and account["code"] == "F-00000"
    assert row["details"]["parents"] == [f"account {company['id']} created {account['id']}"]
    [parent] = world.rows(tenant, entity="account")
    assert (parent["outcome"], parent["action"], parent["record_id"]) == (
        "created", "dependency", account["id"])
    assert parent["correlation_id"] == row["message_id"]
    [link] = world.links(tenant, "account")
    assert (link["external_id"], link["bss_id"]) == (str(company["id"]), account["id"])

    # The company's own discovery finds it linked and its content unchanged.
    run_id, _ = world.pull(tenant, "--entity", "account")
    [again] = world.settled(tenant, run_id, 1)
    assert again["outcome"] == "unchanged" and len(world.bss_records(tenant, "account")) == 1


def test_contacts_pulled_before_their_company_are_linked_once_it_arrives(
        world: PullWorld) -> None:
    """The connector cannot read one company (no ``pull.read``): the contacts wait on the
    retry ladder until the company's own discovery brings it."""
    tenant = world.tenant(LIST_ONLY)
    [company] = world.create("companies", companies(1, "W"))
    people = world.create("people", [{"lastName": f"Waiting {n}", "companyId": company["id"]}
                                     for n in range(3)])

    contacts_run, _ = world.pull(tenant, "--entity", "contact")
    wait_until(lambda: {r["external_id"] for r in world.rows(tenant, outcome="retrying",
                                                             error_class="DependencyPending")}
               == {str(p["id"]) for p in people},
               timeout=WAIT, interval=0.05, what="the contacts to wait for their company",
               state=lambda: world.outcomes(tenant), between=world.stack.check_processes)
    assert world.bss_records(tenant, "contact") == []

    accounts_run, _ = world.pull(tenant, "--entity", "account")

    [created] = world.settled(tenant, accounts_run, 1)
    rows = world.settled(tenant, contacts_run, 3)
    assert [r["outcome"] for r in rows] == ["created"] * 3
    [account] = world.bss_records(tenant, "account")
    assert created["record_id"] == account["id"]
    contacts = world.bss_records(tenant, "contact")
    assert sorted(c["lastName"] for c in contacts) == [f"Waiting {n}" for n in range(3)]
    assert {c["accountId"] for c in contacts} == {account["id"]}

