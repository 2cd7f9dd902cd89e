"""The ``bss-sync`` command line."""
