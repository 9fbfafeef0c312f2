"""Test helpers that are not tests: reference tools, stand-in servers, comparison utilities."""
