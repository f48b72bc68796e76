"""Actors: one process per device, their discovery and their supervision."""
