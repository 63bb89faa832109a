"""The hub's Flask services: serial handler, HTTP poller, state aggregator (and demo sensors)."""
