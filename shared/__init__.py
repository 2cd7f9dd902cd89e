"""bss-sync's common package: everything the dispatcher, pusher and puller share."""

__version__ = "0.1.0"
