"""Webhook routes of the bounce intake, mounted at /hooks/ (config/urls.py)."""

from django.urls import path

from delivery.intake.webhooks import provider_webhook_view

urlpatterns = [
    path("<slug:provider>/", provider_webhook_view, name="bounce_webhook"),
]
