"""The send engine's room: claims and leases of deliveries (claims.py); the batch run,
dispatch, progress and sweep are still in campaigns/services.py (issue "One house")."""
