"""The HTML editor's variables panel in a real headless Chromium."""

from selenium.webdriver.common.by import By

from campaigns.models import Template
from tests.campaigns.content.browser import needs_chromium, screenshot, script_errors, wait
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory

pytestmark = needs_chromium


def test_a_variable_is_inserted_with_its_fallback_at_the_cursor(admin_browser, live_server):
    news = ContactListFactory(name="News")
    SubscriptionFactory(contact=ContactFactory(attributes={"city": "Hangzhou"}), contact_list=news)
    template = Template.objects.create(name="T", subject="Hi", html="<p>Hello , welcome</p>")
    browser = admin_browser
    browser.get(live_server.url + f"/admin/campaigns/template/{template.pk}/change/")
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".skylark-variable"))
    names = [
        b.get_attribute("data-name")
        for b in browser.find_elements(By.CSS_SELECTOR, ".skylark-variable")
    ]
    assert "city" in names and "first_name" in names
    textarea = browser.find_element(By.ID, "id_html")
    # Put the cursor after "Hello " and insert the first name with a Chinese fallback.
    browser.execute_script("arguments[0].setSelectionRange(9, 9)", textarea)
    browser.find_element(By.CSS_SELECTOR, ".skylark-fallback").send_keys("朋友")
    button = browser.find_element(By.CSS_SELECTOR, ".skylark-variable[data-name=first_name]")
    browser.execute_script("arguments[0].click()", button)
    value = textarea.get_attribute("value")
    assert value == '<p>Hello {{ first_name | default("朋友") }}, welcome</p>'
    screenshot(browser, "html-editor-variables")
    assert not script_errors(browser)
