"""The ``web`` program: the hub's HTTP face on the LAN (``HOST:PORT``). It holds no device
state: it checks the token, validates, writes the probe CSV log, registers probes through the
aggregator, forwards readings with the batching pusher, and asks the HTTP poller about the probes
it discovers and provisions."""
