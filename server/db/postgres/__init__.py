"""The PostgreSQL backend (SPEC §16): its own schema migrations and named queries.

Stands alone: nothing here imports the SQLite side. The adapter implementing the storage
port on asyncpg builds on these two modules.
"""
