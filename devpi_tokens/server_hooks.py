"""devpi-server hook implementations (entry point devpi_server)."""
