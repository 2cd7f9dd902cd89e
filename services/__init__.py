"""The three long-running services: dispatcher, pusher, puller."""
