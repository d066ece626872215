"""/api/ routes: version 1 of the REST API, and the unsubscribe link of marketing messages."""

from django.urls import path

from api.api import api
from api.views import message_unsubscribe_view

urlpatterns = [
    path("v1/", api.urls),
    path("unsubscribe/<str:token>/", message_unsubscribe_view, name="message_unsubscribe"),
]
