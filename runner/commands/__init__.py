"""What each `runner` command does; `runner.cli` only parses the command line."""
