"""The SQLite adapter: the only package that knows SQL. `Store` is its one public door."""
