"""Segments: saved filters over contacts (rules in contacts.segments)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

__all__ = ["Segment", "SegmentMatch"]


class SegmentMatch(models.TextChoices):
    ALL = "all", _("All rules (AND)")
    ANY = "any", _("Any rule (OR)")


class Segment(models.Model):
    name = models.CharField(max_length=200, unique=True, verbose_name=_("name"))
    description = models.TextField(blank=True, verbose_name=_("description"))
    match = models.CharField(
        max_length=3,
        choices=SegmentMatch.choices,
        default=SegmentMatch.ALL,
        verbose_name=_("match"),
    )
    rules = models.JSONField(
        default=list,
        help_text=_(
            'A list of rules, e.g. [{"field": "attributes.city", "op": "eq", "value": "Paris"}]. See docs/contacts.md, "Segments".'
        ),
        verbose_name=_("rules"),
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated"))

    class Meta:
        verbose_name = _("segment")
        verbose_name_plural = _("segments")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from contacts.segments import SegmentRuleError, rules_validate

        try:
            rules_validate(self.rules, match=self.match)
        except SegmentRuleError as exc:
            raise ValidationError({"rules": exc.errors}) from exc

    def contacts(self) -> models.QuerySet:
        """The matching contacts (whatever their status or suppression): a lazy queryset."""
        from contacts.segments import segment_contacts

        return segment_contacts(rules=self.rules, match=self.match)
