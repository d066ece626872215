"""Cancel a campaign."""

from campaigns.management.lifecycle import LifecycleCommand
from campaigns.services import campaign_cancel


class Command(LifecycleCommand):
    help = "Cancel a campaign: see docs/operations.md for what each transition does."
    service = staticmethod(campaign_cancel)
    done = "cancelled"
