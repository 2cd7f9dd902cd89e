"""The demo's closing report: both sides counted, the audit log, one record as each side
holds it, where to look and what to try next."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from demo.processes import bss_sync
from demo.systems import COLLECTIONS, INSTANCE, ORG
from demo.thirdparty import REPO
from shared.messaging.topology import PULLER, PUSHER, WorkQueue
from shared.paths import schemas_dir

if TYPE_CHECKING:
    from demo.run import Demo

AUDIT_LIMIT = 15
CONNECTOR = REPO / "connectors" / "acme-crm.json"
TRANSFORM = "AccountToCompany"
PUSHER = WorkQueue(PUSHER)
PULLER = WorkQueue(PULLER)
#: Where the connector's default server variables point (preview needs no --server then).
DEFAULT_CRM_URL = "http://127.0.0.1:3000"


class Report:
    def __init__(self, demo: Demo) -> None:
        self.demo = demo
        self.out = demo.out

    def print(self) -> None:
        self.counts()
        self.audit()
        self.one_record()
        self.where_to_look()

    # ------------------------------------------------------------------ sections

    def counts(self) -> None:
        out = self.out
        rows = self.demo.comparison()
        out.heading("Result: the BSS and the CRM")
        out.line(f"    {'entity':<9} {'in the BSS':>10}   {'in the CRM':<16} "
                 f"{'synced':>9}")
        for row in rows:
            crm = f"{row.crm} {COLLECTIONS[row.entity]}"
            mark = "ok" if row.complete else "MISSING"
            out.line(f"    {row.entity:<9} {row.bss:>10}   {crm:<16} "
                     f"{f'{row.synced}/{row.bss}':>9}  {mark}")
        bss = sum(r.bss for r in rows)
        synced = sum(r.synced for r in rows)
        crm = sum(r.crm for r in rows)
        changes = self.demo.changes
        if all(r.complete for r in rows):
            out.line(f"RESULT: all {bss} BSS records are in the CRM ({crm} CRM records; "
                     f"{len(changes.get('updated', {}))} updates and "
                     f"{len(changes.get('deleted', []))} delete synced too)")
        else:
            out.line(f"RESULT: NOT IN SYNC: {synced} of {bss} BSS records are in the CRM, "
                     f"which holds {crm}")
        self.pull_result()

    def pull_result(self) -> None:
        """The other way: the CRM edit, and what the pull did with each listed record."""
        demo, out = self.demo, self.out
        pulled = demo.pulled
        if not pulled or demo.bss is None:
            return
        named = demo.bss.get("account", pulled["account"]).get("name")
        outcomes = demo.pull_outcomes()
        shown = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) or "nothing"
        if named == pulled["name"]:
            out.line(f"RESULT: the CRM edit is in the BSS: account {pulled['account']} named "
                     f"{named!r} (pull run {pulled['run']}: {pulled['published']} records "
                     f"listed; the puller: {shown})")
        else:
            out.line(f"RESULT: NOT IN SYNC: the CRM edit of company {pulled['company']} is not "
                     f"in the BSS (account {pulled['account']} is named {named!r})")

    def audit(self) -> None:
        out = self.out
        out.heading(f"The audit log: bss-sync audit search --org {self.org} "
                    f"--limit {AUDIT_LIMIT}")
        result = bss_sync(["audit", "search", "--org", self.org, "--limit", str(AUDIT_LIMIT)],
                          self.demo.env(), check=False)
        out.block((result.stdout + result.stderr).strip() or "(no output)", indent="  ")
        out.line("  (newest first; the dispatcher fans each BSS event out to the instances that "
                 "want it, the pusher writes to the CRM; the puller writes what a pull listed "
                 "in the CRM to the BSS)")

    def one_record(self) -> None:
        demo, out = self.demo, self.out
        assert demo.bss is not None and demo.crm is not None
        updated = list(demo.changes.get("updated", {}))
        if updated:
            record_id = updated[0]
        else:
            records = demo.bss.records("account")
            if not records:
                return
            record_id = records[0]["id"]
        account = demo.bss.get("account", record_id)
        company = demo.crm.by_bss_id("account").get(record_id)
        mapping = account_mapping()
        sample = demo.workdir / "sample-account.json"
        sample.write_text(json.dumps(account, indent=2, ensure_ascii=False) + "\n")
        out.heading("One record on both sides")
        out.line(f"  BSS account {record_id}  (GET {demo.bss.url}/organizations/{self.org}"
                 f"/account/{record_id})")
        out.block(json.dumps(ordered(account, account_fields()), indent=2,
                             ensure_ascii=False), indent="    ")
        if company is None:
            out.line("  CRM company: not found")
            return
        out.line(f"  CRM company {company['id']}  (GET {demo.crm.url}/companies/{company['id']})")
        order = ["id", *mapping, "createdAt", "updatedAt"]
        out.block(json.dumps(ordered(company, order), indent=2, ensure_ascii=False),
                  indent="    ")
        out.line(f"  What made one from the other: the {TRANSFORM} transform of "
                 f"connectors/acme-crm.json (CRM field: JSONata expression over the BSS record)")
        width = max(len(target) for target in mapping)
        for target, expression in mapping.items():
            out.line(f"    {target:<{width}}  {expression}")

    def where_to_look(self) -> None:
        demo, out = self.demo, self.out
        assert demo.sandbox is not None and demo.crm_server is not None
        bss, crm = demo.sandbox.url, demo.crm_server.url
        vhost = demo.options.vhost
        out.heading("Where to look")
        out.line(f"  BSS (sandbox API)   {bss}/organizations/{self.org}/account   "
                 f"(also /contact, /case; contract: schemas/bss-api.openapi.json)")
        out.line(f"  Acme CRM            {crm}/companies   (also /people, /tickets; header "
                 f"X-Api-Key: {demo.env()['ACME_CRM_API_KEY']}; {crm}/db needs no key)")
        out.line(f"  RabbitMQ            {demo.management_url}   (user {demo.amqp_user}) "
                 f"vhost {vhost}, queues {PUSHER.name}, {PULLER.name} and their dead queues "
                 f"{PUSHER.dead_queue}, {PULLER.dead_queue}: "
                 f"{demo.management_url}/#/queues/{quote(vhost, safe='')}/{PUSHER.name}")
        out.line(f"  PostgreSQL          {demo.database_url}   (tables audit_log, links, "
                 "instances…; the sandbox's records in schema sandbox)")
        logs = ", ".join(demo.rel(p) for p in sorted(demo.workdir.glob("*.log")))
        out.line(f"  Logs                {logs}")

        cli = self.cli()
        db_env = demo.shell_env("DATABASE_URL")
        out.heading("Try")
        out.line(f"  export {db_env}")
        out.line(f"  {cli} audit search --org {self.org} --entity account --limit 20")
        out.line(f"  {cli} audit search --org {self.org} --outcome retrying,failed,dead")
        out.line(f"  {cli} instances show {INSTANCE}")
        server = "" if crm == DEFAULT_CRM_URL else f" --server {crm}"
        out.line(f"  {cli} preview connectors/acme-crm.json --object Account --direction push "
                 f"--record {demo.rel(demo.workdir / 'sample-account.json')}{server}")
        out.line(f"  {demo.shell_env('AMQP_URL')} {cli} dead list")
        out.line(f"  {demo.shell_env('AMQP_URL')} ACME_CRM_API_KEY="
                 f"{demo.env()['ACME_CRM_API_KEY']} {cli} pull --instance {INSTANCE} --wait"
                 "   # after editing a company in the CRM (see below)")
        if demo.options.wait:
            body = json.dumps({"name": "Globex Telecom", "code": "GLOBEX-1", "type": "customer",
                               "currency": "EUR", "webSite": "https://Globex.example"})
            out.line("  # create an account in the BSS, then find it in the CRM:")
            out.line(f"  curl -s -X POST {bss}/organizations/{self.org}/account "
                     f"-H 'Content-Type: application/json' -d {shlex.quote(body)}")
            out.line(f"  curl -s -H 'X-Api-Key: {demo.env()['ACME_CRM_API_KEY']}' "
                     f"'{crm}/companies?accountNumber=GLOBEX-1'")
            company = demo.pulled.get("company", 1)
            out.line("  # edit a company in the CRM, pull (the command above), then find the "
                     "edit in the BSS:")
            out.line(f"  curl -s -X PATCH -H 'X-Api-Key: {demo.env()['ACME_CRM_API_KEY']}' "
                     f"-H 'Content-Type: application/json' {crm}/companies/{company} "
                     f"-d '{{\"phone\": \"+1 555 0100\"}}'")

    # ------------------------------------------------------------------ helpers

    @property
    def org(self) -> str:
        return ORG

    def cli(self) -> str:
        """How to call bss-sync from the current directory (the venv's script if any)."""
        script = Path(sys.executable).parent / "bss-sync"
        if not script.exists():
            return "bss-sync"
        try:
            return str(script.relative_to(Path.cwd()))
        except ValueError:
            return str(script)


# ---------------------------------------------------------------------- record display


def account_mapping() -> dict[str, str]:
    """The connector's account → company map (target field → JSONata expression)."""
    document = json.loads(CONNECTOR.read_text())
    return dict(document["x-synchronization"]["transforms"][TRANSFORM]["map"])


def account_fields() -> list[str]:
    """The canonical account's fields in the schema's order."""
    schema = json.loads((schemas_dir() / "entities" / "account.schema.json").read_text())
    return list(schema.get("properties", {}))


def ordered(record: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """``record`` with its keys in ``order`` (dotted names order nested objects), the
    others after them as they were."""
    top = list(dict.fromkeys(key.split(".", 1)[0] for key in order))
    rank = {key: n for n, key in enumerate(top)}
    result: dict[str, Any] = {}
    for key in sorted(record, key=lambda k: rank.get(k, len(rank))):
        value = record[key]
        if isinstance(value, dict):
            value = ordered(value, [k.split(".", 1)[1] for k in order if k.startswith(key + ".")])
        result[key] = value
    return result
