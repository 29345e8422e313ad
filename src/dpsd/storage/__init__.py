"""Storage adapters: SQLite by default, PostgreSQL for several dpsd processes on one store."""
