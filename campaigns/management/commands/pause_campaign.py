"""Pause a campaign."""

from campaigns.management.lifecycle import LifecycleCommand
from campaigns.services import campaign_pause


class Command(LifecycleCommand):
    help = "Pause a campaign: see docs/operations.md for what each transition does."
    service = staticmethod(campaign_pause)
    done = "paused"
