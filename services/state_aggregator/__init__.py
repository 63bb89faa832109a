"""The state aggregator: device registry, TTL cache over the handlers, change stream."""
