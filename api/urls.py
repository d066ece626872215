"""/api/ routes: version 1 of the REST API."""

from django.urls import path

from api.api import api

urlpatterns = [path("v1/", api.urls)]
