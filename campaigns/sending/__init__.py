"""The send engine's room: prepare.py, dispatch.py, claims.py (claims and leases), lane.py
(the database lane), batch.py (the batch run), progress.py (error-rate pause, finish),
sweep.py; the campaign's lifecycle stays in campaigns/services.py."""
