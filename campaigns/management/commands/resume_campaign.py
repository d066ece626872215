"""Resume a campaign."""

from campaigns.management.lifecycle import LifecycleCommand
from campaigns.services import campaign_resume


class Command(LifecycleCommand):
    help = "Resume a campaign: see docs/operations.md for what each transition does."
    service = staticmethod(campaign_resume)
    done = "resumed"
