"""Watching the senders: SMTP checks (checks.py, services.py, tasks.py), domain checks
(domaincheck.py: SPF, DKIM, DMARC), their models and admin pages."""
