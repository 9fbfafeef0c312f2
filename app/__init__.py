"""Aha's PySide6 desktop app: widgets and Qt adapters over `engine`, no domain logic of its own."""
