"""Pre-flight check: what it finds on a sample of real recipients, and that errors stop a send."""

import pytest

from campaigns.errors import CampaignValidationError
from campaigns.models import Campaign, CampaignStatus
from campaigns.preflight import (
    GMAIL_CLIP_BYTES,
    Level,
    campaign_preflight,
    link_problem,
    sample_contacts,
)
from campaigns.preview import campaign_preview
from campaigns.services import campaign_send, campaign_validate
from contacts.models import ContactStatus, SubscriptionStatus
from delivery.models import DkimKey
from mailkit.dkim import generate_dkim_key
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

GOOD_HTML = '<p>Hi {{ name }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'


def _campaign(*, html=GOOD_HTML, subject="Hello {{ first_name }}", contacts=3, **fields):
    contact_list = ContactListFactory(name="Pre-flight")
    for _ in range(contacts):
        SubscriptionFactory(
            contact=ContactFactory(attributes={"city": "Paris"}),
            contact_list=contact_list,
        )
    fields.setdefault("from_email", "news@example.com")
    campaign = Campaign.objects.create(name="Spring", subject=subject, html=html, **fields)
    campaign.lists.set([contact_list])
    return campaign


def _key(domain="example.com"):
    pem, public = generate_dkim_key(algorithm="ed25519")
    key = DkimKey(domain=domain, selector="s1", algorithm="ed25519", public_key=public)
    key.set_private_key(pem)
    key.save()


def _by_code(report, code):
    return [f for f in report.findings if f.code == code]


def test_a_good_campaign_has_no_error_or_warning():
    _key()
    report = campaign_preflight(_campaign())
    assert report.ok
    assert report.warnings == []
    assert report.recipients == 3 and report.sampled == 3
    assert report.codes() == ["sampled"]


def test_template_syntax_error_is_an_error_with_its_line():
    report = campaign_preflight(_campaign(html=GOOD_HTML + "\n\n<p>{% if x %}</p>"))
    (finding,) = _by_code(report, "template_error")
    assert finding.level == Level.ERROR
    assert "html, line 3" in finding.message


def test_render_error_names_the_count_and_first_contact():
    html = GOOD_HTML + "\n{{ (1 / 0) if boom else '' }}"
    campaign = _campaign(html=html)
    contact = campaign.lists.get().contacts.first()
    contact.attributes = {"boom": True}
    contact.save()
    report = campaign_preflight(campaign)
    (finding,) = _by_code(report, "render_error")
    assert finding.level == Level.ERROR
    assert "1 of 3" in finding.message and "ZeroDivisionError" in finding.message
    assert f"contact #{contact.pk}" in finding.message
    assert "line 2" in finding.message


def test_unknown_variables_are_warnings_naming_the_variable_and_the_count():
    html = GOOD_HTML + "<p>{{ citty }} {{ city }} {{ vip_code }} {{ campaign_name }}</p>"
    campaign = _campaign(html=html)
    contact = campaign.lists.get().contacts.first()
    contact.attributes = {"city": "Paris", "vip_code": "X1"}
    contact.save()
    report = campaign_preflight(campaign)
    unknown = _by_code(report, "unknown_variable")
    assert [f.level for f in unknown] == [Level.WARNING]
    assert "{{ citty }}" in unknown[0].message and "3 of 3" in unknown[0].message
    (partial,) = _by_code(report, "variable_missing")
    assert "2 of 3" in partial.message and "vip_code" in partial.message
    assert report.ok


def test_html_over_gmail_clipping_limit_is_a_warning():
    html = GOOD_HTML + "<p>" + "x" * (GMAIL_CLIP_BYTES + 10) + "</p>"
    report = campaign_preflight(_campaign(html=html))
    (finding,) = _by_code(report, "html_clipped")
    assert finding.level == Level.WARNING
    assert report.max_html_bytes > GMAIL_CLIP_BYTES


def test_missing_unsubscribe_link_is_an_error_and_stops_the_send():
    campaign = _campaign(html="<p>Hi {{ name }}</p>")
    report = campaign_preflight(campaign)
    (finding,) = _by_code(report, "no_unsubscribe_link")
    assert finding.level == Level.ERROR
    with pytest.raises(CampaignValidationError, match="unsubscribe"):
        campaign_send(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.DRAFT


def test_unsubscribe_url_only_in_the_subject_does_not_count():
    report = campaign_preflight(_campaign(html="<p>x</p>", subject="{{ unsubscribe_url }}"))
    assert _by_code(report, "no_unsubscribe_link")


@pytest.mark.parametrize(
    ("href", "problem"),
    [
        ("https://example.com/a", ""),
        ("mailto:help@example.com", ""),
        ("tel:+331234", ""),
        ("#top", ""),
        ("javascript:alert(1)", "not an http(s)"),
        ("www.example.com", "not an http(s)"),
        ("https://example.com/a b", "spaces"),
        ("https://example.com/{{ code }}", "unrendered"),
        ("", "empty"),
        ("https://", "nothing after"),
    ],
)
def test_link_problems(href, problem):
    assert (problem in link_problem(href)) and (bool(link_problem(href)) == bool(problem))


def test_malformed_links_and_unrendered_tags_are_warnings():
    html = (
        GOOD_HTML + '<a href="www.example.com">a</a><a href="https://x.test/{{ city }} y">b</a>'
        "<p>{% raw %}{{ oops }}{% endraw %}</p>"
    )
    report = campaign_preflight(_campaign(html=html))
    malformed = _by_code(report, "malformed_link")
    assert [f.level for f in malformed] == [Level.WARNING, Level.WARNING]
    assert "'www.example.com'" in malformed[0].message and "3 of 3" in malformed[0].message
    assert "Paris y" in malformed[1].message and "spaces" in malformed[1].message
    assert _by_code(report, "unrendered_tag")[0].level == Level.WARNING
    assert report.ok


def test_from_domain_without_dkim_key_is_a_warning_with_the_command():
    report = campaign_preflight(_campaign())
    (finding,) = _by_code(report, "no_dkim_key")
    assert finding.level == Level.WARNING
    assert "dkim_keygen example.com" in finding.message
    _key(domain="other.example")
    assert _by_code(campaign_preflight(_campaign(from_email="a@example.com")), "no_dkim_key")


@pytest.mark.parametrize("from_email", ["", "news", "news@", "a b@example.com", "x@exa mple.com"])
def test_missing_or_invalid_from_is_an_error(from_email):
    report = campaign_preflight(_campaign(from_email=from_email))
    assert [f.level for f in _by_code(report, "from_invalid")] == [Level.ERROR]
    assert campaign_validate(_campaign(from_email=from_email))


def test_no_recipients_is_an_error():
    campaign = _campaign(contacts=2)
    contact_list = campaign.lists.get()
    contact_list.subscriptions.update(status=SubscriptionStatus.UNSUBSCRIBED)
    report = campaign_preflight(campaign)
    assert [f.level for f in _by_code(report, "no_recipients")] == [Level.ERROR]
    assert report.sampled == 0
    campaign.lists.clear()
    assert _by_code(campaign_preflight(campaign), "no_lists")


def test_sample_is_random_and_only_active_subscribed_contacts():
    campaign = _campaign(contacts=40)
    contact_list = campaign.lists.get()
    inactive = ContactFactory(email="gone@example.org", status=ContactStatus.BOUNCED)
    SubscriptionFactory(contact=inactive, contact_list=contact_list)
    seen = set()
    for _ in range(10):
        sample = sample_contacts(campaign, size=5)
        assert len(sample) == 5
        seen |= {s.email for s in sample}
    assert "gone@example.org" not in seen
    assert len(seen) > 10  # not always the first rows by id


def test_validate_returns_only_errors():
    campaign = _campaign(html=GOOD_HTML + "<p>{{ unknown_thing }}</p>")
    assert campaign_validate(campaign) == []
    campaign.html = "<p>{{ name }</p>"
    campaign.save()
    (problem,) = campaign_validate(campaign)
    assert "line 1" in problem


def test_preview_is_the_composed_message_with_headers_and_size():
    _key()
    campaign = _campaign(html=GOOD_HTML + "<p>{{ city }}</p>", from_name="Shop")
    preview = campaign_preview(campaign, subject_prefix="[Test] ")
    assert preview.subject.startswith("[Test] Hello ")
    assert "Paris" in preview.html and "Paris" in preview.text
    headers = dict(preview.headers)
    assert headers["From"] == "Shop <news@example.com>"
    assert headers["To"].endswith(f"<{preview.contact.email}>")
    assert "DKIM-Signature" in headers and "List-Unsubscribe" in headers
    assert preview.size == len(preview.raw) > preview.html_bytes


def test_the_check_at_send_samples_a_window_from_a_random_point_and_finds_the_same_errors():
    """At Send the audience is not counted nor sorted at random (a full read of a large
    audience): a window of recipients from a random point, wrapping round, is rendered."""
    from campaigns.preflight import _sample_window

    campaign = _campaign(contacts=12)
    contact_list = campaign.lists.get()
    SubscriptionFactory(
        contact=ContactFactory(email="gone@example.org", status=ContactStatus.BOUNCED),
        contact_list=contact_list,
    )
    ContactFactory(email="not-targeted@example.org")
    targeted = {s.contact.email for s in contact_list.subscriptions.select_related("contact")}
    starts = set()
    for _ in range(10):
        window = _sample_window(campaign, size=5)
        emails = [s.email for s in window]
        assert len(emails) == 5 and len(set(emails)) == 5
        assert set(emails) <= targeted - {"gone@example.org"}
        starts.add(window[0].contact_id)
    assert len(starts) > 1  # not always the same rows
    everyone = _sample_window(campaign, size=50)  # wraps round to the lowest ids
    assert len(everyone) == 12

    report = campaign_preflight(campaign, at_send=True)
    assert report.ok and report.sampled == 12 and report.recipients == 1
    contact = contact_list.contacts.exclude(status=ContactStatus.BOUNCED).first()
    campaign.html = GOOD_HTML + "\n{{ (1 / 0) if boom else '' }}"
    campaign.save()
    contact.attributes = {"boom": True}
    contact.save()
    (finding,) = _by_code(campaign_preflight(campaign, at_send=True), "render_error")
    assert f"contact #{contact.pk}" in finding.message
    contact_list.subscriptions.update(status=SubscriptionStatus.UNSUBSCRIBED)
    assert _by_code(campaign_preflight(campaign, at_send=True), "no_recipients")


def test_the_window_at_send_reads_growing_id_ranges_of_a_sparse_audience(monkeypatch):
    """The window reads ranges of contact ids (each range also bounding the list look-up),
    doubling them, so a list that is a thin slice of many contacts is still found whole,
    once each, in id order from the random point and wrapping round, from any start."""
    from campaigns import preflight
    from contacts.models import Contact

    campaign = _campaign(contacts=4)
    for i in range(40):  # contacts not on the list, after the members
        ContactFactory(email=f"other{i}@example.org")
    members = sorted(campaign.lists.get().contacts.values_list("id", flat=True))
    low, high = min(Contact.objects.values_list("id", flat=True)), max(members) + 40
    monkeypatch.setattr(preflight, "_WINDOW_FIRST_STEP", 1)
    ranges = []
    real = preflight._recipients

    def recording(campaign, **kwargs):
        ranges.append(kwargs.get("ids"))
        return real(campaign, **kwargs)

    monkeypatch.setattr(preflight, "_recipients", recording)
    for start in range(low, high + 1):
        monkeypatch.setattr(preflight.random, "randint", lambda a, b, _s=start: _s)
        ranges.clear()
        window = [s.contact_id for s in preflight._sample_window(campaign, size=10)]
        expected = [m for m in members if m >= start] + [m for m in members if m < start]
        assert window == expected, start
        assert None not in ranges  # never the whole audience at once
        for leg in ([r for r in ranges if r[0] >= start], [r for r in ranges if r[0] < start]):
            assert all(b - a + 1 <= 2**i for i, (a, b) in enumerate(leg))  # 1, 2, 4, ...


def test_findings_are_written_in_the_active_language():
    from django.utils import translation

    campaign = _campaign(html="<p>{{ citty }}</p>", subject=" ")
    with translation.override("zh-hans"):
        report = campaign_preflight(campaign)
    messages = {f.code: f.message for f in report.findings}
    assert messages["subject_empty"] == "邮件主题为空。"
    assert messages["no_unsubscribe_link"].startswith("HTML 内容中没有退订链接")
    assert messages["unknown_variable"].startswith("{{ citty }} 既不是联系人字段")
    assert "（3 位中有 3 位没有）" in messages["unknown_variable"]
    assert messages["sampled"].startswith("已从 3 位收件人中随机渲染 3 位")


def test_the_checks_are_a_table_run_in_order():
    from campaigns.preflight import PREFLIGHT_CHECKS

    names = [name for name, _check in PREFLIGHT_CHECKS]
    assert len(names) == len(set(names))
    # A stopped run keeps the findings so far: no subject and no content are both reported.
    report = campaign_preflight(_campaign(html="", subject=""))
    assert report.codes()[-2:] == ["subject_empty", "content_empty"]
    assert report.sampled == 0 and report.variables == ()


def test_webview_url_is_a_builtin_variable_with_a_working_link():
    html = GOOD_HTML + '<p><a href="{{ webview_url }}">View in your browser</a></p>'
    report = campaign_preflight(_campaign(html=html))
    assert not _by_code(report, "unknown_variable")
    assert not [f for f in report.findings if "webview_url" in f.message]
    preview = campaign_preview(_campaign(html=html))
    assert "/v/" in preview.html and 'href=""' not in preview.html
