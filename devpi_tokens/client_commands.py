"""devpi-client subcommands (entry point devpi_client)."""
