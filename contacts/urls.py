"""Public sign-up URLs (included at the site root by config/urls.py)."""

from django.urls import path

from contacts.views import signup_confirm_view, signup_view

urlpatterns = [
    path("subscribe/confirm/<str:token>/", signup_confirm_view, name="signup_confirm"),
    path("subscribe/<str:token>/", signup_view, name="signup"),
]
