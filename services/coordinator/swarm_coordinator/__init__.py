"""coordinator service."""
