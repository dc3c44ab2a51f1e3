"""runner: bring a machine from booted to ready for work, and keep it there."""

__version__ = "0.1.0"
