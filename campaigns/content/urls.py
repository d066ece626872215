"""Routes of the content editors, under /admin/content/ (admin sign-in required)."""

from django.contrib import admin
from django.urls import path

from campaigns.content import views


def _admin(view):
    return admin.site.admin_view(view)


urlpatterns = [
    path("starters/", _admin(views.starters_view), name="content_starters"),
    path("templates/new/", _admin(views.design_new_view), name="content_design_new"),
    path("templates/new/save/", _admin(views.design_create_view), name="content_design_create"),
    path(
        "templates/<int:template_id>/design/",
        _admin(views.design_editor_view),
        name="content_design_edit",
    ),
    path(
        "templates/<int:template_id>/design/save/",
        _admin(views.design_save_view),
        name="content_design_save",
    ),
    path("preview/", _admin(views.design_preview_view), name="content_design_preview"),
    path(
        "variables.json",
        admin.site.admin_view(views.variables_view),
        name="content_variables",
    ),
]
