"""Routes of the content editors, under /admin/content/ (admin sign-in required)."""

from django.contrib import admin
from django.urls import path

from campaigns.content import views

urlpatterns = [
    path(
        "variables.json",
        admin.site.admin_view(views.variables_view),
        name="content_variables",
    ),
]
