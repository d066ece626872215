"""The pure mail core: render, compose, sign, send, classify. No Django, no app imports.

Everything here takes and returns plain values (frozen dataclasses, bytes, str); the Django
apps above it (contacts <- delivery <- campaigns <- api) bring the database and settings.
"""
