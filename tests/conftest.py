"""Shared test fixtures; the SMTP server fixtures live in tests/smtp_server.py."""

pytest_plugins = ["tests.smtp_server"]
