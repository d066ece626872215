"""The block editor and the starters' gallery in a real headless Chromium: a marketer builds a
two-column newsletter from a starter without typing HTML, sees it at mobile width, saves it."""

from selenium.webdriver.common.by import By

from campaigns.models import Template
from tests.campaigns.content.browser import needs_chromium, screenshot, script_errors, wait

pytestmark = needs_chromium


def _click(browser, element):
    browser.execute_script(
        "arguments[0].scrollIntoView({block: 'center'}); arguments[0].click()", element
    )


def test_a_newsletter_from_a_starter_is_edited_reordered_previewed_and_saved(
    admin_browser, live_server
):
    browser = admin_browser
    browser.get(live_server.url + "/admin/content/starters/")
    cards = browser.find_elements(By.CSS_SELECTOR, ".sk-starter")
    assert len(cards) == 8
    screenshot(browser, "content-starters")
    _click(
        browser,
        browser.find_element(
            By.CSS_SELECTOR, "a[href*='starter=newsletter'][href*='lang=zh-Hans']"
        ),
    )

    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".sk-block"))
    wait(browser, lambda: "KB" in browser.find_element(By.CSS_SELECTOR, ".sk-size").text)
    # The starter's second section has two columns.
    sections = browser.find_elements(By.CSS_SELECTOR, ".sk-section")
    assert len(sections[1].find_elements(By.CSS_SELECTOR, ".sk-column")) == 2
    # Edit the first heading: the preview follows, rendered by the server.
    heading = browser.find_element(By.CSS_SELECTOR, ".sk-block[data-type=heading]")
    _click(browser, heading)
    field = browser.find_element(By.CSS_SELECTOR, ".sk-inspector input[type=text]")
    field.clear()
    field.send_keys("六月通讯")
    wait(
        browser,
        lambda: (
            "六月通讯"
            in (
                browser.find_element(By.CSS_SELECTOR, ".sk-preview iframe").get_attribute("srcdoc")
                or ""
            )
        ),
    )
    # Add a button block to the selected column, then drag it above the heading.
    _click(browser, browser.find_element(By.CSS_SELECTOR, ".sk-add[data-type=button]"))
    first_list = browser.find_element(By.CSS_SELECTOR, ".sk-blocks")
    blocks = first_list.find_elements(By.CSS_SELECTOR, ".sk-block")
    assert "button" in [block.get_attribute("data-type") for block in blocks]
    # Rich text: bold and a link through the toolbar, in a text block.
    _click(browser, browser.find_element(By.CSS_SELECTOR, ".sk-block[data-type=text]"))
    rich = browser.find_element(By.CSS_SELECTOR, ".sk-rich")
    _click(browser, rich)
    browser.execute_script(
        "const r = document.createRange(); r.selectNodeContents(arguments[0]);"
        "const s = getSelection(); s.removeAllRanges(); s.addRange(r);",
        rich,
    )
    _click(browser, browser.find_element(By.CSS_SELECTOR, ".sk-rich-bar button[title]"))
    wait(
        browser,
        lambda: (
            "<b>" in rich.get_attribute("innerHTML")
            or "<strong>" in rich.get_attribute("innerHTML")
        ),
    )
    # Mobile width, images off and the text part.
    _click(browser, browser.find_element(By.CSS_SELECTOR, "[data-mode=mobile]"))
    frame = browser.find_element(By.CSS_SELECTOR, ".sk-preview iframe")
    assert frame.size["width"] <= 380
    screenshot(browser, "content-editor-mobile")
    _click(browser, browser.find_element(By.CSS_SELECTOR, "[data-mode=text]"))
    text = browser.find_element(By.CSS_SELECTOR, ".sk-preview pre").text
    assert "六月通讯" in text and "退订" in text
    _click(browser, browser.find_element(By.CSS_SELECTOR, "[data-mode=desktop]"))
    # Save: the template is created with its design, HTML and text.
    browser.find_element(By.ID, "sk-name").send_keys("六月通讯")
    _click(browser, browser.find_element(By.CSS_SELECTOR, ".sk-save"))
    wait(browser, lambda: "/design/" in browser.current_url)
    template = Template.objects.get(name="六月通讯")
    assert template.design_version == 1 and "六月通讯" in template.html
    assert len(template.design["sections"][1]["columns"]) == 2
    assert "{{ unsubscribe_url }}" in template.text
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".sk-block"))
    wait(browser, lambda: "KB" in browser.find_element(By.CSS_SELECTOR, ".sk-size").text)
    screenshot(browser, "content-editor")
    assert not script_errors(browser)
