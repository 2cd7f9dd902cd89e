"""A small client of the RabbitMQ management HTTP API (synchronous, for tooling and tests).

What the CLI, the tests and the benchmark need: vhosts and permissions, queue
depths, connections (to close one, as a broker restart would), and peeking at
messages. Failures raise :class:`~shared.errors.InfrastructureError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from shared.errors import InfrastructureError
from shared.logging import redact
from shared.messaging.amqp_url import AmqpUrl

DEFAULT_PORT = 15672
#: AmqpUrl lives in shared.messaging.amqp_url; importing it from here keeps working.
__all__ = ["AmqpUrl", "ManagementClient", "management_url_for"]


def _q(name: str) -> str:
    return quote(name, safe="")


def management_url_for(amqp_url: str, management_url: str | None = None) -> str:
    """``management_url``, or ``http://<amqp host>:15672`` by default."""
    if management_url:
        return management_url.rstrip("/")
    return f"http://{AmqpUrl.parse(amqp_url).host}:{DEFAULT_PORT}"


class ManagementClient:
    """The management API of one broker, acting on ``vhost`` unless told otherwise."""

    def __init__(self, base_url: str, user: str, password: str, vhost: str = "/",
                 timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.vhost = vhost
        self._http = httpx.Client(base_url=self.base_url + "/api", auth=(user, password),
                                  timeout=timeout)

    @classmethod
    def for_amqp_url(cls, amqp_url: str, management_url: str | None = None) -> ManagementClient:
        """A client with the AMQP URL's credentials and vhost."""
        parts = AmqpUrl.parse(amqp_url)
        return cls(management_url_for(amqp_url, management_url), parts.user, parts.password,
                   parts.vhost)

    def for_vhost(self, vhost: str) -> ManagementClient:
        client = ManagementClient.__new__(ManagementClient)
        client.base_url, client.user, client.vhost, client._http = (
            self.base_url, self.user, vhost, self._http)
        return client

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise InfrastructureError(
                f"cannot reach the RabbitMQ management API at {self.base_url}: "
                f"{redact(str(exc)) or type(exc).__name__}") from exc
        if response.status_code == 404 and method in ("DELETE", "GET"):
            return None
        if response.status_code >= 400:
            raise InfrastructureError(f"RabbitMQ management API {method} {path}: "
                                      f"{response.status_code} {redact(response.text[:300])}")
        return response.json() if response.content else None

    # ------------------------------------------------------------------ vhosts

    def overview(self) -> dict[str, Any]:
        return self._call("GET", "/overview")

    def vhosts(self) -> list[str]:
        return [v["name"] for v in self._call("GET", "/vhosts") or []]

    def create_vhost(self, vhost: str) -> None:
        """Create ``vhost`` and give this client's user every permission on it."""
        self._call("PUT", f"/vhosts/{_q(vhost)}", json={})
        self._call("PUT", f"/permissions/{_q(vhost)}/{_q(self.user)}",
                   json={"configure": ".*", "write": ".*", "read": ".*"})

    def delete_vhost(self, vhost: str) -> None:
        self._call("DELETE", f"/vhosts/{_q(vhost)}")

    # ------------------------------------------------------------------ queues

    def queues(self) -> list[dict[str, Any]]:
        """Every queue of the vhost with its counts (sampled every few seconds by RabbitMQ;
        use :func:`shared.messaging.tooling.queue_depth` for an exact number)."""
        return self._call("GET", f"/queues/{_q(self.vhost)}") or []

    def queue(self, name: str) -> dict[str, Any] | None:
        return self._call("GET", f"/queues/{_q(self.vhost)}/{_q(name)}")

    def delete_queue(self, name: str) -> None:
        self._call("DELETE", f"/queues/{_q(self.vhost)}/{_q(name)}")

    def purge_queue(self, name: str) -> None:
        self._call("DELETE", f"/queues/{_q(self.vhost)}/{_q(name)}/contents")

    def get_messages(self, queue: str, count: int = 10, *, requeue: bool = True,
                     truncate: int = 50_000) -> list[dict[str, Any]]:
        """Up to ``count`` messages from ``queue`` (payload, properties with headers).

        ``requeue`` puts them back (a peek); otherwise they are removed.
        """
        body = {"count": count, "ackmode": "ack_requeue_true" if requeue else "ack_requeue_false",
                "encoding": "auto", "truncate": truncate}
        return self._call("POST", f"/queues/{_q(self.vhost)}/{_q(queue)}/get", json=body) or []

    # ------------------------------------------------------------------ connections

    def connections(self) -> list[dict[str, Any]]:
        """Open connections of the vhost; ``client_properties.connection_name`` names ours."""
        return self._call("GET", f"/vhosts/{_q(self.vhost)}/connections") or []

    def close_connection(self, name: str, reason: str = "closed by bss-sync tooling") -> None:
        self._call("DELETE", f"/connections/{_q(name)}", headers={"X-Reason": reason})

    def close_connections(self, match: Callable[[dict[str, Any]], bool] = lambda c: True) -> int:
        """Close the vhost's connections that ``match``; return how many."""
        closed = 0
        for conn in self.connections():
            if match(conn):
                self.close_connection(conn["name"])
                closed += 1
        return closed

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0,
                 interval: float = 0.05, what: str = "condition") -> None:
        """Poll ``predicate`` until true; raise ``TimeoutError`` naming ``what``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)
