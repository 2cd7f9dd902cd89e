"""``AMQP_URL`` with one broker or the nodes of a cluster (docs/architecture.md §7)."""

from __future__ import annotations

import pytest

from shared.messaging.amqp_url import (
    AmqpUrl,
    broker_at,
    broker_urls,
    check_amqp_url,
    kombu_hostname,
    with_vhost,
)
from shared.settings import SettingsInvalid, get_settings

CLUSTER = "amqp://bss:s3cret@r1:5672/prod, amqp://bss:s3cret@r2:5673/prod,amqp://bss:s3cret@r3/prod"


def test_one_url_or_the_nodes_of_a_cluster() -> None:
    assert broker_urls("amqp://g:g@h/%2F") == ["amqp://g:g@h/%2F"]
    assert broker_urls(CLUSTER) == ["amqp://bss:s3cret@r1:5672/prod",
                                    "amqp://bss:s3cret@r2:5673/prod",
                                    "amqp://bss:s3cret@r3/prod"]
    assert kombu_hostname(CLUSTER) == ";".join(broker_urls(CLUSTER))
    assert AmqpUrl.parse(CLUSTER).host == "r1"  # the first node, for single-broker tools


def test_errors_name_every_node_and_never_the_password() -> None:
    assert broker_at(CLUSTER) == ('RabbitMQ at r1:5672, r2:5673, r3:5672 (vhost "prod", '
                                  "user bss)")
    assert broker_at("amqp://g:pw@h:5672/%2F") == 'RabbitMQ at h:5672 (vhost "/", user g)'


def test_another_vhost_on_every_node() -> None:
    assert with_vhost(CLUSTER, "other") == ",".join(
        f"amqp://bss:s3cret@{host}/other" for host in ("r1:5672", "r2:5673", "r3:5672"))


def test_every_node_must_serve_the_same_vhost() -> None:
    check_amqp_url(CLUSTER)
    with pytest.raises(ValueError, match=r"its URLs name different vhosts \('prod', 'test'\)"):
        check_amqp_url("amqp://r1/prod,amqp://r2/test")
    with pytest.raises(ValueError, match=r"^its URL number 2: it names no host"):
        check_amqp_url("amqp://r1/prod,amqp:///prod")


def test_a_malformed_node_is_one_line_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("AMQP_URL", "amqp://bss:s3cret@r1/prod,amqp://bss:s3cret@r2:56x2/prod")
    try:
        with pytest.raises(SettingsInvalid) as caught:
            get_settings()
    finally:
        get_settings.cache_clear()
    message = str(caught.value)
    assert message.startswith("AMQP_URL is not a RabbitMQ URL: ")
    assert "its URL number 2: its port is not a number" in message
    assert "s3cret" not in message and "\n" not in message
