"""Errors that end a command with a one-line message."""


class ConfigError(Exception):
    """Invalid configuration or input; str() is the one line shown to the operator (exit 78)."""
