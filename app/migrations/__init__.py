"""Alembic migrations of Citadel's PostgreSQL schema, shipped inside the package.

Apply them with `app.adapters.migrations.upgrade(url)` (or `alembic upgrade head` from the repo
root, which reads CITADEL_DATABASE_URL); write new ones with `alembic revision -m "..."`.
"""
