"""A real HTTP third party for actions made of several requests: the billing API of
tests/data/vendor/customers.yaml (stdlib ``http.server`` in a thread), in memory.

=============================================  ==========================================
``POST /api/customers``                        201, the customer with a new ``cu-<n>``
``GET /api/customers/{id}``                    200 with an ``ETag`` (its version)
``PUT /api/customers/{id}``                    200; 412 unless ``If-Match`` is its ETag
``DELETE /api/customers/{id}``                 204, its addresses with it
``POST /api/customers/{id}/addresses``         201, a new ``ad-<n>``: its billing address
``PUT /api/customers/{id}/addresses/{aid}``    200
=============================================  ==========================================

Every route wants ``X-Api-Key: <key>`` (401) and answers 404 for an unknown customer or
address. ``fail[(method, route)] = [status, …]`` answers those statuses first, one per
request, doing nothing (``route``: ``customers``, ``customer``, ``addresses``,
``address``). ``requests`` holds ``(method, path)`` of every request, in order.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fixtures.threaded_http import ThreadedHttpServer

ROUTES = (("customers", re.compile(r"^/api/customers$")),
          ("customer", re.compile(r"^/api/customers/(?P<id>[^/]+)$")),
          ("addresses", re.compile(r"^/api/customers/(?P<id>[^/]+)/addresses$")),
          ("address", re.compile(r"^/api/customers/(?P<id>[^/]+)/addresses/(?P<aid>[^/]+)$")))

Answer = tuple[int, Any, dict[str, str]]


class CustomersServer(ThreadedHttpServer):
    """Start with ``with CustomersServer(key) as server:``; ``server.url`` is its origin."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.customers: dict[str, dict[str, Any]] = {}
        self.addresses: dict[str, dict[str, Any]] = {}
        self.fail: dict[tuple[str, str], list[int]] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        super().__init__(_handler(self))

    def state(self) -> dict[str, Any]:
        """A copy of what it holds: ``customers`` and ``addresses`` by id."""
        with self.lock:
            return json.loads(json.dumps({"customers": self.customers,
                                          "addresses": self.addresses}))

    def sent(self, method: str, route: str) -> int:
        """How many ``method`` requests reached ``route`` (failed ones included)."""
        with self.lock:
            return sum(1 for m, path in self.requests
                       if m == method and _route(path)[0] == route)

    # -- answering -------------------------------------------------------------------

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        with self.lock:
            self.requests.append((method, path))
            if headers.get("x-api-key") != self.key:
                return 401, {"message": "a valid X-Api-Key is required"}, {}
            route, ids = _route(path)
            queued = self.fail.get((method, route))
            if queued:
                return queued.pop(0), {"message": "injected failure"}, {}
            customer = self.customers.get(ids.get("id", ""))
            if route in ("customer", "addresses", "address") and customer is None:
                return 404, {"message": f"no customer {ids.get('id')}"}, {}
            if route == "customers" and method == "POST":
                return self._create_customer(body)
            if route == "customer":
                return self._customer(method, customer, headers, body)
            if route == "addresses" and method == "POST":
                return self._create_address(customer, body)
            if route == "address" and method == "PUT":
                return self._replace_address(customer, ids["aid"], body)
            return 405, {"message": f"{method} {path} is not served"}, {}

    def _create_customer(self, body: Any) -> Answer:
        customer = {**body, "id": f"cu-{next(self._ids)}", "version": 1}
        self.customers[customer["id"]] = customer
        return 201, _shown(customer), {}

    def _customer(self, method: str, customer: dict[str, Any], headers: dict[str, str],
                  body: Any) -> Answer:
        etag = f'"v{customer["version"]}"'
        if method == "GET":
            return 200, _shown(customer), {"ETag": etag}
        if method == "DELETE":
            del self.customers[customer["id"]]
            for address_id in [a for a, held in self.addresses.items()
                               if held["customer"] == customer["id"]]:
                del self.addresses[address_id]
            return 204, None, {}
        if method == "PUT":
            if headers.get("if-match") != etag:
                return 412, {"message": f"If-Match must be {etag}"}, {}
            kept = {k: customer[k] for k in ("id", "billingAddressId", "version")
                    if k in customer}
            customer.clear()
            customer.update({**body, **kept})
            customer["version"] += 1
            return 200, _shown(customer), {"ETag": f'"v{customer["version"]}"'}
        return 405, {"message": f"{method} is not served"}, {}

    def _create_address(self, customer: dict[str, Any], body: Any) -> Answer:
        address = {**body, "id": f"ad-{next(self._ids)}", "customer": customer["id"]}
        self.addresses[address["id"]] = address
        customer["billingAddressId"] = address["id"]
        return 201, {k: v for k, v in address.items() if k != "customer"}, {}

    def _replace_address(self, customer: dict[str, Any], address_id: str,
                         body: Any) -> Answer:
        held = self.addresses.get(address_id)
        if held is None or held["customer"] != customer["id"]:
            return 404, {"message": f"no address {address_id}"}, {}
        held.clear()
        held.update({**body, "id": address_id, "customer": customer["id"]})
        return 200, {**body, "id": address_id}, {}


def _shown(customer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in customer.items() if k != "version"}


def _route(path: str) -> tuple[str, dict[str, str]]:
    for name, pattern in ROUTES:
        match = pattern.match(path)
        if match:
            return name, match.groupdict()
    return "", {}


def _handler(server: CustomersServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer, extra = server.answer(self.command, self.path.split("?")[0],
                                                  headers, body)
            content = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            if answer is not None:
                self.send_header("Content-Type", "application/json")
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler
