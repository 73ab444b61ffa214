"""The data layer: schema (SQL migrations), SQLAlchemy models, triggers, seed data."""
