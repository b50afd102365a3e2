"""dataset service."""
