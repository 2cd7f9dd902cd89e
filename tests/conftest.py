"""Test configuration shared by every test directory.

Real RabbitMQ and PostgreSQL come from ``tests/fixtures`` (AMQP_URL / DATABASE_URL,
otherwise testcontainers); unit tests never touch them. HubSpot's published specs
come from ``VENDOR_SPECS`` (``tests/fixtures/vendor_specs.py``).
"""

pytest_plugins = ["tests.fixtures.database", "tests.fixtures.amqp", "tests.fixtures.vendor_specs",
                  "tests.fixtures.rabbit_node"]
