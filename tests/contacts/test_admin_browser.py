"""The import wizard and the segment editor driven in a real headless Chromium.

Skipped when Selenium, chromium or chromedriver is missing (Debian: `apt-get install chromium
chromium-driver`; .ci/run installs them). These catch what the test client cannot: Unfold's
own scripts acting on our markup, and the JavaScript of the rule editor and the progress page.
"""

from __future__ import annotations

import json
import shutil

import pytest
from django.conf import settings as django_settings
from django.test import Client

from contacts.imports import import_job_run
from contacts.models import Contact, ContactList, ImportJob, ImportStatus, Segment
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory

webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver"
)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def admin_browser(browser, live_server, transactional_db, django_user_model, settings, tmp_path):
    """The browser signed in as a superuser on the live server."""
    settings.MEDIA_ROOT = tmp_path / "media"
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(user)
    browser.get(live_server.url + "/admin/login/")
    browser.delete_all_cookies()
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    browser.add_cookie({"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "path": "/"})
    browser.get_log("browser")  # drop what the login page logged
    return browser


def _wait(browser, condition, timeout: float = 10):
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda _: condition())


def _click(browser, element) -> None:
    # Unfold's sticky submit row can cover an element scrolled to the bottom edge.
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def _script_errors(browser) -> list[str]:
    """Console errors other than failed requests (the favicon, a 400 from a rule preview)."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and entry.get("source") != "network"
    ]


def test_xlsx_import_through_the_wizard_with_live_progress(
    admin_browser, live_server, tmp_path, monkeypatch
):
    from openpyxl import Workbook

    started: list[int] = []
    monkeypatch.setattr("contacts.admin.import_job_start", lambda *, job: started.append(job.pk))
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["E-mail", "姓名", "城市"])
    for i in range(40):
        sheet.append(["not-an-address" if i == 7 else f"u{i}@example.com", f"名{i}", "北京"])
    path = tmp_path / "客户.xlsx"
    workbook.save(path)
    browser = admin_browser

    browser.get(live_server.url + "/admin/contacts/importjob/add/")
    browser.find_element(By.NAME, "file").send_keys(str(path))
    browser.find_element(By.NAME, "new_list_name").send_keys("From Excel")
    _click(browser, browser.find_element(By.XPATH, "//button[contains(., 'Upload and preview')]"))

    _wait(browser, lambda: browser.find_elements(By.ID, "column-mapping"))
    assert "Excel workbook" in browser.find_element(By.ID, "detected-encoding").text
    targets = browser.find_elements(By.CSS_SELECTOR, "#column-mapping select")
    assert [Select(t).first_selected_option.get_attribute("value") for t in targets] == [
        "email",
        "name",
        "attribute",
    ]
    city = browser.find_element(By.NAME, "col_2_attr")
    assert (city.get_attribute("value"), city.is_enabled()) == ("city", True)
    assert not browser.find_element(By.NAME, "col_1_attr").is_enabled()
    _click(browser, browser.find_element(By.CSS_SELECTOR, "button[name=start]"))

    _wait(browser, lambda: browser.find_elements(By.ID, "import-progress"))
    job = ImportJob.objects.get()
    assert started == [job.pk]
    # The file name never leaks into the new list's name (Unfold's file-input script).
    assert job.contact_list.name == "From Excel"
    assert job.options["expected_rows"] == 40
    assert browser.find_element(By.ID, "status").text == "Pending"
    assert not browser.find_element(By.ID, "rejected-link").is_displayed()

    # Part-way, as import_job_run records a workbook: the page polls and shows 10 of 40.
    ImportJob.objects.filter(pk=job.pk).update(
        status=ImportStatus.RUNNING,
        started_at=job.created_at,
        processed_rows=10,
        total_rows=10,
        detected_encoding="xlsx",
    )
    _wait(browser, lambda: browser.find_element(By.ID, "percent").text == "25")
    assert "width: 25%" in browser.find_element(By.ID, "bar").get_attribute("style")
    assert browser.find_element(By.ID, "total").text == "40"

    import_job_run(job_id=job.pk)
    _wait(browser, lambda: browser.find_element(By.ID, "status").text == "Done")
    assert browser.find_element(By.ID, "created").text == "39"
    assert browser.find_element(By.ID, "rejected").text == "1"
    assert browser.find_element(By.ID, "rejected-link").is_displayed()
    assert "Invalid email address: 1" in browser.find_element(By.ID, "reasons").text
    assert Contact.objects.get(email="u0@example.com").attributes == {"city": "北京"}
    assert _script_errors(browser) == []


def test_segment_editor_rows_drive_the_rules_and_the_live_count(admin_browser, live_server):
    newsletter = ContactListFactory(name="Newsletter")
    ContactListFactory(name="Other")
    for i in range(6):
        contact = ContactFactory(attributes={"city": "Paris" if i % 2 else "Oslo"})
        if i < 4:
            SubscriptionFactory(contact=contact, contact_list=newsletter)
    browser = admin_browser

    browser.get(live_server.url + "/admin/contacts/segment/add/")
    browser.find_element(By.ID, "id_name").send_keys("Paris readers")

    def rules() -> list[dict]:
        return json.loads(browser.find_element(By.ID, "id_rules").get_attribute("value"))

    def count() -> str:
        return browser.find_element(By.ID, "segment-count").text

    _click(browser, browser.find_element(By.ID, "segment-add"))
    attribute = browser.switch_to.active_element  # the new row's attribute name has the focus
    assert attribute.get_attribute("placeholder") == "attribute name"
    attribute.send_keys("city")
    row = browser.find_elements(By.CSS_SELECTOR, "#segment-rows tr")[0]
    row.find_element(By.CSS_SELECTOR, "input[placeholder=value]").send_keys("Paris")
    _wait(browser, lambda: count() == "3")
    assert rules() == [{"field": "attributes.city", "op": "eq", "value": "Paris"}]

    # A list rule starts on a list the menu shows, not on an empty value the menu hides.
    _click(browser, browser.find_element(By.ID, "segment-add"))
    row = browser.find_elements(By.CSS_SELECTOR, "#segment-rows tr")[1]
    Select(row.find_element(By.TAG_NAME, "select")).select_by_value("list")
    _wait(browser, lambda: count() == "2")
    assert rules()[1] == {"field": "list", "op": "in", "value": newsletter.pk}
    assert browser.find_element(By.ID, "segment-errors").text == ""

    # A date rule gets the browser's date input.
    row = browser.find_elements(By.CSS_SELECTOR, "#segment-rows tr")[1]
    Select(row.find_element(By.TAG_NAME, "select")).select_by_value("created_at")
    row = browser.find_elements(By.CSS_SELECTOR, "#segment-rows tr")[1]
    assert row.find_element(By.CSS_SELECTOR, "input[type=date]").is_displayed()
    row.find_element(By.XPATH, ".//button[.='Remove']").click()
    _wait(browser, lambda: count() == "3")

    _click(browser, browser.find_element(By.NAME, "_save"))
    _wait(browser, lambda: Segment.objects.filter(name="Paris readers").exists())
    segment = Segment.objects.get()
    assert segment.rules == [{"field": "attributes.city", "op": "eq", "value": "Paris"}]
    assert segment.contacts().count() == 3
    assert ContactList.objects.count() == 2
    assert _script_errors(browser) == []
