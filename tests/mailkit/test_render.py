"""Template compilation and per-recipient rendering."""

import datetime as dt

import pytest

from mailkit.errors import TemplateError
from mailkit.render import (
    TemplateSource,
    compile_templates,
    contact_context,
    render_content,
    template_variables,
)


def _render(html="", subject="s", text="", layout="", **context):
    compiled = compile_templates(
        TemplateSource(subject=subject, html=html, text=text, layout=layout)
    )
    return render_content(compiled, context)


def test_undefined_renders_empty_and_fallbacks_apply():
    result = _render(
        subject="Hi {{ name | default('friend') }}, {{ city or 'your city' }}{{ missing.deep.x }}",
        html="<p>{{ nick | default('pal', true) }}</p>",
        nick="",
    )
    assert result.subject == "Hi friend, your city"
    assert result.html == "<p>pal</p>"


def test_undefined_in_comparisons_and_arithmetic_does_not_break_a_send():
    result = _render(html="{% if age > 18 %}adult{% endif %}[{{ points + 10 }}]")
    assert result.html == "[]"


def test_html_is_autoescaped_subject_and_text_are_not():
    result = _render(subject="{{ v }}", html="<p>{{ v }}</p>", text="{{ v }}", v="<b>&")
    assert result.html == "<p>&lt;b&gt;&amp;</p>"
    assert result.subject == "<b>&"
    assert result.text == "<b>&"


def test_date_filter_with_time_zone():
    result = _render(
        html="{{ signup | date('%Y-%m-%d %H:%M', tz=contact_tz) }}|{{ d | date('%d/%m/%Y') }}",
        signup="2024-01-02T03:04:05Z",
        contact_tz="Asia/Shanghai",
        d=dt.date(2024, 5, 6),
    )
    assert result.html == "2024-01-02 11:04|06/05/2024"


def test_date_filter_with_bad_time_zone_falls_back_to_utc():
    assert _render(html="{{ t | datetime(tz='Not/AZone') }}", t=0).html == "1970-01-01 00:00"


def test_number_filter():
    result = _render(
        html="{{ a | number }} {{ a | number(2) }} {{ b | number(1, '.', ',') }}",
        a=1234567.891,
        b="9876.54",
    )
    assert result.html == "1,234,568 1,234,567.89 9.876,5"


def test_syntax_error_names_field_and_line():
    with pytest.raises(TemplateError) as info:
        compile_templates(TemplateSource(subject="ok", html="<p>\n\n{% if x %}\n</p>"))
    assert info.value.field == "html"
    assert info.value.line is not None
    with pytest.raises(TemplateError) as info:
        compile_templates(TemplateSource(subject="{{ oops", html=""))
    assert info.value.field == "subject"


def test_render_error_is_a_template_error():
    compiled = compile_templates(TemplateSource(subject="s", html="{{ 1 / zero }}"))
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        render_content(compiled, {"zero": 0})


CSS_TEMPLATE = """<html><head><style>
p { color: red } a { color: blue } td { padding: 2px }
</style></head><body>
<table>{% for row in rows %}<tr><td>{{ row }}</td></tr>{% endfor %}</table>
<p>Hi {{ name | default("you & me") }}</p>
<a href="{{ url }}?a=1&b={{ b }}" {% if blank %}target="_blank"{% endif %}>shop</a>
</body></html>"""


def test_css_is_inlined_and_jinja_survives_in_text_attributes_and_tables():
    compiled = compile_templates(TemplateSource(subject="s", html=CSS_TEMPLATE))
    source = compiled.html  # compiled template: check behaviour by rendering
    result = render_content(
        compiled, {"rows": ["r1", "r2"], "url": "https://x.test/p", "b": "2", "blank": True}
    )
    assert '<p style="color: red;">Hi you &amp; me</p>' in result.html
    assert "<style" not in result.html
    assert "<tbody" not in result.html  # the parser's restructuring did not leak in
    assert result.html.count('<td style="padding: 2px;">') == 2
    assert 'href="https://x.test/p?a=1&b=2" target="_blank" style="color: blue;"' in result.html
    assert source is not None


def test_text_part_generated_from_html_keeps_links_and_personalization():
    result = _render(
        html='<h1>Hello {{ name }}</h1><p>See <a href="{{ url }}">our offer</a>.</p>',
        name="张三",
        url="https://x.test/o?id=1",
    )
    assert "Hello 张三" in result.text
    assert "[our offer](https://x.test/o?id=1)" in result.text


def test_text_from_html_falls_back_per_recipient_when_tags_move():
    compiled = compile_templates(TemplateSource(subject="s", html=CSS_TEMPLATE))
    result = render_content(compiled, {"rows": ["row-one", "row-two"], "url": "u"})
    assert result.text.index("row-one") < result.text.index("row-two") < result.text.index("Hi")


def test_layout_extends_with_inlined_layout_css():
    layout = (
        "<html><head><style>p { color: green }</style></head><body>"
        "<div>{% block content %}{% endblock %}</div><footer>{{ unsubscribe_url }}</footer>"
        "</body></html>"
    )
    html = '{% extends "layout" %}{% block content %}<p>Hi {{ name }}</p>{% endblock %}'
    result = _render(html=html, layout=layout, name="Ann", unsubscribe_url="https://u.test/x")
    assert '<p style="color: green;">Hi Ann</p>' in result.html
    assert "https://u.test/x" in result.html
    assert "Hi Ann" in result.text


def test_contact_context_merges_attributes_without_overriding_identity():
    context = contact_context(
        email="a@example.com",
        name="Zhang San",
        attributes={"city": "Beijing", "email": "evil@x.test", "bad key": 1},
        extra={"unsubscribe_url": "https://u"},
    )
    assert context["email"] == "a@example.com"
    assert context["first_name"] == "Zhang"
    assert context["city"] == "Beijing"
    assert context["contact"]["city"] == "Beijing"
    assert context["contact"]["email"] == "a@example.com"
    assert "bad key" not in context
    assert context["unsubscribe_url"] == "https://u"


def test_template_variables_lists_undeclared_names():
    source = TemplateSource(
        subject="{{ first_name }}",
        html="{% set x = 1 %}{{ x }}{{ city }}{% for p in products %}{{ p.name }}{% endfor %}",
    )
    assert template_variables(source) == {"first_name", "city", "products"}


def test_subject_is_one_line():
    assert _render(subject="a\n{{ v }}\r\nb", v="x\u2028y").subject == "a x y b"


@pytest.mark.parametrize("name", ["", "   ", None, "\u3000"])
def test_default_takes_the_fallback_for_an_empty_or_blank_value(name):
    # An imported contact's empty name used to leave "Hello ," (66 of 200 messages).
    result = _render(html="<p>Hello {{ name | default('friend') }},</p>", name=name)
    assert result.html == "<p>Hello friend,</p>"
    assert _render(html="{{ x | d('y') }}", x="").html == "y"


def test_default_keeps_a_real_value_and_jinjas_boolean_meaning():
    assert _render(html="{{ name | default('friend') }}", name="Ann").html == "Ann"
    assert _render(html="{{ n | default(5) }}", n=0).html == "0"
    assert _render(html="{{ n | default(5, true) }}", n=0).html == "5"


def test_generated_text_part_has_no_trailing_spaces_or_blank_runs():
    html = (
        "<table><tr><td>Short</td><td>A much longer cell of text</td></tr>"
        "<tr><td>A very very long first cell here</td><td>x</td></tr></table>"
        "<p>a</p><p></p><p></p><p>b</p>"
    )
    for text in (_render(html=html).text, _render(html=html + "{{ name }}", name="Z").text):
        assert text.endswith("\n") and not text.endswith("\n\n")
        assert all(line == line.rstrip() for line in text.split("\n"))
        assert "\n\n\n" not in text
        assert "Short" in text and "b" in text


def test_inlining_keeps_the_media_rules_in_one_style_block():
    html = (
        "<html><head><style>p { color: red } @media (max-width: 480px) { p { color: blue } }"
        "</style><style>@media (prefers-color-scheme: dark) { p { color: #fff } }</style>"
        "</head><body><p>{{ name }}</p></body></html>"
    )
    rendered = _render(html=html, name="Ann").html
    assert rendered.count("<style") == 1
    assert '<p style="color: red;">Ann</p>' in rendered
    assert "@media (max-width: 480px) { p { color: blue } }" in rendered
    assert "prefers-color-scheme: dark" in rendered
