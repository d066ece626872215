"""URL routes: the admin, the dev mailbox and the public pages."""

from django.contrib import admin
from django.urls import include, path

from campaigns.views import click_view, open_pixel_view, unsubscribe_view, webview_view
from delivery.admin import mailbox_message_view, mailbox_view

urlpatterns = [
    path("admin/mailbox/", admin.site.admin_view(mailbox_view), name="mailbox"),
    path(
        "admin/mailbox/<str:name>/",
        admin.site.admin_view(mailbox_message_view),
        name="mailbox_message",
    ),
    path("admin/content/", include("campaigns.content.urls")),
    path("admin/", admin.site.urls),
    path("u/<str:token>/", unsubscribe_view, name="unsubscribe"),
    path("o/<str:token>.gif", open_pixel_view, name="track_open"),
    path("c/<str:token>/<str:link>/", click_view, name="track_click"),
    path("v/<str:token>/", webview_view, name="webview"),
    path("hooks/", include("delivery.intake.urls")),
    path("api/", include("api.urls")),
    path("", include("contacts.urls")),
]
