"""The chaos writer's own ordering (tests/chaos/workload.py), against a small BSS of
the test's own: a delete waits for the record's earlier patches, even one still being
retried after a fault, so a 404 on a patch means harm done by bss-sync's stack, never
the workload racing itself."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.chaos.workload import Step, Writer
from tests.fixtures.threaded_http import ThreadedHttpServer

pytestmark = pytest.mark.chaos


class TinyBss(ThreadedHttpServer):
    """Creates, merge patches and deletes under ``/organizations/o/<entity>``; the first
    PATCH answers 503 (storage unavailable), as the sandbox does while its PostgreSQL
    connection is cut."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.patch_failures = 1
        bss = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                bss.log.append((self.command, self.path.rsplit("/", 1)[-1], status))

            def _body(self) -> Any:
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def do_POST(self) -> None:
                with bss.lock:
                    record_id = f"r{len(bss.records) + 1}"
                    bss.records[record_id] = {"id": record_id, **self._body()}
                    self._answer(201, bss.records[record_id])

            def do_PATCH(self) -> None:
                record_id = self.path.rsplit("/", 1)[-1]
                with bss.lock:
                    if bss.patch_failures:
                        bss.patch_failures -= 1
                        return self._answer(503)
                    if record_id not in bss.records:
                        return self._answer(404)
                    bss.records[record_id].update(self._body())
                    self._answer(200, bss.records[record_id])

            def do_DELETE(self) -> None:
                record_id = self.path.rsplit("/", 1)[-1]
                with bss.lock:
                    self._answer(204 if bss.records.pop(record_id, None) else 404)

        super().__init__(Handler)


def test_a_delete_waits_for_a_patch_of_its_record_still_being_retried() -> None:
    plan = [Step("create", "contact", 0, {"lastName": "Doe"}),
            Step("patch", "contact", 0, {"jobTitle": "Title 1"}),
            Step("delete", "contact", 0, {})]
    with TinyBss() as bss:
        writer = Writer(bss.url, "token", "o", threads=4)
        try:
            writer.play(plan, 0.05, threading.Event())  # the delete starts ~17 ms after
        finally:
            writer.close()
    assert bss.log == [("POST", "contact", 201), ("PATCH", "r1", 503),
                       ("PATCH", "r1", 200), ("DELETE", "r1", 204)]
    assert bss.records == {} and writer.retries == 1
