"""The Preview page of a campaign in a real headless Chromium: the block editor's pane (desktop
and mobile widths, images off, the text part, the raw source, the size against Gmail's clip)."""

from selenium.webdriver.common.by import By

from campaigns.models import Campaign
from tests.campaigns.content.browser import needs_chromium, screenshot, script_errors, wait
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory

pytestmark = needs_chromium


def _mode(browser, mode):
    button = browser.find_element(By.CSS_SELECTOR, f".sk-preview [data-mode={mode}]")
    browser.execute_script("arguments[0].click()", button)


def test_the_campaign_preview_shows_every_pane(admin_browser, live_server):
    news = ContactListFactory(name="News")
    SubscriptionFactory(
        contact=ContactFactory(email="li@example.cn", name="李雷"), contact_list=news
    )
    campaign = Campaign.objects.create(
        name="June",
        subject="Hello {{ name }}",
        from_email="news@example.com",
        html=(
            '<p>你好 {{ name }}</p><img src="https://img.example/a.png" alt="六月新品">'
            '<p><a href="{{ webview_url }}">View</a> <a href="{{ unsubscribe_url }}">退订</a></p>'
        ),
    )
    campaign.lists.set([news])
    browser = admin_browser
    browser.get(live_server.url + f"/admin/campaigns/campaign/{campaign.pk}/preview/")
    frame = browser.find_element(By.CSS_SELECTOR, ".sk-preview iframe")
    wait(browser, lambda: "你好 李雷" in (frame.get_attribute("srcdoc") or ""))
    assert "KB" in browser.find_element(By.CSS_SELECTOR, ".sk-size").text
    wide = frame.size["width"]
    _mode(browser, "mobile")
    assert frame.size["width"] <= 380 < wide
    screenshot(browser, "campaign-preview-mobile")
    _mode(browser, "images_off")
    srcdoc = frame.get_attribute("srcdoc")
    assert "img.example" not in srcdoc and "六月新品" in srcdoc
    _mode(browser, "text")
    pre = browser.find_element(By.CSS_SELECTOR, ".sk-preview pre")
    assert "你好 李雷" in pre.text and not frame.is_displayed()
    _mode(browser, "source")
    assert "Message-ID:" in pre.text and "List-Unsubscribe:" in pre.text
    assert not script_errors(browser)
