"""Test configuration shared by every test directory.

Real RabbitMQ and PostgreSQL come from ``tests/fixtures`` (AMQP_URL / DATABASE_URL,
otherwise testcontainers); unit tests never touch them. HubSpot's published specs
come from ``VENDOR_SPECS`` (``tests/fixtures/vendor_specs.py``).
"""

import os

import pytest

import shared.logging

# The dispatchers the tests start fan events out only: a nightly run or the daily
# redelivery firing because a test happened to cross 23:00 would add pushes the test
# does not expect. The tests of the schedules turn them on (tests/e2e/test_runs.py).
os.environ.setdefault("SCHEDULES_ENABLED", "false")

pytest_plugins = ["tests.fixtures.database", "tests.fixtures.amqp", "tests.fixtures.vendor_specs",
                  "tests.fixtures.rabbit_node"]


@pytest.fixture(autouse=True)
def _secrets_registered_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret a test registers is masked for that test only.

    The mask is process-wide and masks every 8-character piece of a secret: a test
    secret such as ``client-secret-1`` would otherwise garble ``client-secret`` in
    whatever test runs next. The test works on a copy; ``monkeypatch`` puts the mask
    of before the test back.
    """
    monkeypatch.setattr(shared.logging, "_mask", shared.logging._mask.copy())
