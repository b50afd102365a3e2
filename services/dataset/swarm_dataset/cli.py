def register(subparsers):
    """Adds this service's subcommands (filled in as the service lands)."""
