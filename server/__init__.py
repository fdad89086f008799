"""Self-hosted bulk-requests service: one aiohttp process, one SQLite file."""

__version__ = "0.1.0"
