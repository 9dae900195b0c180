"""Integrations with frameworks (PyTorch)."""
