"""The database: SQLite (:mod:`zmirror.db.sqlite`) or PostgreSQL
(:mod:`zmirror.db.postgresql`) behind one interface (:mod:`zmirror.db.pools`),
chosen by :mod:`zmirror.db.engine`; the stores (users, whitelists, registries,
access logs) and how a node hears what other processes changed (watch, listen).

Design: docs/design/database.md.
"""
