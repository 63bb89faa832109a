"""Bridge features: each owns one part of the contract and has its own start/stop."""
