"""Bounce and complaint intake: every road in (bounce server, MTA pipe, mailbox poller,
provider webhooks, List-Unsubscribe mail) ends in ingest.py: store, correlate, apply policy."""
