"""The variables panel: what the chosen lists offer, and what an inserted variable renders."""

from html import unescape

import pytest
from django.urls import reverse

from campaigns.content.variables import template_variables_offered, variable_insertion
from contacts.models import SubscriptionStatus
from mailkit.render import TemplateSource, compile_templates, contact_context, render_content
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def _subscribe(contact_list, attributes, status=SubscriptionStatus.SUBSCRIBED):
    SubscriptionFactory(
        contact=ContactFactory(attributes=attributes), contact_list=contact_list, status=status
    )


def test_the_lists_attributes_are_offered_most_common_first():
    news, other = ContactListFactory(name="News"), ContactListFactory(name="Other")
    _subscribe(news, {"city": "Xi'an", "plan": "pro"})
    _subscribe(news, {"city": "Chengdu", "not an identifier": 1})
    _subscribe(news, {"secret_code": 1}, status=SubscriptionStatus.UNSUBSCRIBED)
    _subscribe(other, {"shoe_size": 42})
    offered = template_variables_offered(list_ids=[news.pk])
    names = [v.name for v in offered]
    assert names == [
        "first_name",
        "name",
        "email",
        "city",
        "plan",
        "unsubscribe_url",
        "webview_url",
    ]
    assert {v.kind for v in offered if v.name == "city"} == {"attribute"}
    # No list chosen (a template): the attributes of any contact.
    assert "shoe_size" in [v.name for v in template_variables_offered(list_ids=[])]


@pytest.mark.parametrize("fallback", ["friend", "朋友", 'a "quoted" }} {% raw %} \\ value'])
def test_an_inserted_variable_renders_its_fallback_for_an_empty_value(fallback):
    snippet = variable_insertion(name="name", fallback=fallback)
    compiled = compile_templates(TemplateSource(subject="s", html=f"<p>Hi {snippet}</p>"))
    for name, shown in (("", fallback), ("Ann", "Ann")):
        context = contact_context(email="a@example.org", name=name, attributes={})
        html = render_content(compiled, context).html
        assert html.startswith("<p>Hi ") and "default" not in html
        assert unescape(html) == f"<p>Hi {shown}</p>"


def test_variable_insertion_refuses_a_name_that_is_not_an_identifier():
    with pytest.raises(ValueError):
        variable_insertion(name="x }}{{ 7*7", fallback="")


def test_the_variables_endpoint_needs_a_signed_in_user(client, admin_client):
    news = ContactListFactory(name="News")
    _subscribe(news, {"city": "Wuhan"})
    url = reverse("content_variables") + f"?lists={news.pk},junk"
    assert client.get(url).status_code == 302  # to the admin sign-in
    response = admin_client.get(url)
    assert response.status_code == 200
    assert "city" in [v["name"] for v in response.json()["variables"]]


def test_the_template_form_shows_the_variables_panel(admin_client):
    page = admin_client.get(reverse("admin:campaigns_template_add")).content.decode()
    assert "skylark-html-editor" in page and "campaigns/content/variables.js" in page
