"""``python -m demo`` (``make demo``): bss-sync at work on this machine, in one command.

Against the local RabbitMQ and PostgreSQL (``AMQP_URL``, ``DATABASE_URL``) it recreates
a database and a vhost of its own, starts the Acme CRM stand-in (json-server), the
sandbox BSS, the dispatcher and the pusher, applies ``demo/installation.json``, seeds
the BSS, waits until the CRM holds every record, updates and deletes a few, prints a
report, and keeps everything running until Ctrl-C. See ``demo/README.md``.
"""
