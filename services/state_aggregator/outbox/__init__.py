"""The aggregator's durable change log (the outbox): every accepted change is on disk before the
handler is answered, and readers resume from their committed position."""
