"""Test configuration shared by every test directory.

Real RabbitMQ and PostgreSQL come from ``tests/fixtures`` (AMQP_URL / DATABASE_URL,
otherwise testcontainers); unit tests never touch them.
"""

pytest_plugins = ["tests.fixtures.database", "tests.fixtures.amqp"]
