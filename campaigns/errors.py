"""Exceptions of the campaigns app."""


class CampaignError(Exception):
    """Base class for campaign errors."""


class CampaignStateError(CampaignError):
    """The campaign is not in a state that allows this action."""


class CampaignValidationError(CampaignError):
    """The campaign cannot be sent as it is (template error, no sender, no lists)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))
