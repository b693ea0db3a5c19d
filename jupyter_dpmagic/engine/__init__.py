"""Engines execute query plans; they clamp, bound contributions and aggregate, never add noise."""
