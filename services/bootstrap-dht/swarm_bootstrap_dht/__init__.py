"""bootstrap-dht service."""
