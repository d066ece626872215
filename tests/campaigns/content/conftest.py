"""Fixtures of the content tests: a signed-in headless browser."""

import pytest

from tests.campaigns.content import browser as chromium


@pytest.fixture(scope="module")
def browser():
    driver = chromium.new_browser()
    yield driver
    driver.quit()


@pytest.fixture
def admin_browser(browser, live_server, transactional_db, django_user_model, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    chromium.sign_in(browser, live_server, user)
    return browser
