"""Fixtures of the API tests: keys and an authenticated client."""

from __future__ import annotations

import pytest

from api import services
from api.models import Scope


@pytest.fixture
def api_key(db, redis_client):
    """(ApiKey, secret) with every scope."""
    return services.api_key_create(application="shop", scopes=list(Scope.values))


def auth(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
