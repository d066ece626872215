"""Hostile templates end in a TemplateError (or a harmless empty value), never run code or hang."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailkit.errors import TemplateError
from mailkit.render import (
    RenderLimits,
    TemplateSource,
    compile_templates,
    render_content,
    template_variables,
)
from tests.mailkit.render_attacks import AMPLIFIERS

HOSTILE = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].system('id') }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ request.application.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ '{0.__class__.__base__.__subclasses__}'.format('') }}",
    "{{ '{x.__class__}'.format_map({'x': 1}) }}",
    "{{ range.__globals__ }}",
    "{{ (range(10**9)|list)|length }}",
    "{{ 'a' * 10**9 }}",
    "{{ 'a' * 1000 * 1000 * 1000 }}",
    "{{ [1] * 10**9 }}",
    "{{ 2 ** 10 ** 9 }}",
    "{{ 2 ** (10 ** 9) }}",
    "{{ ((2 ** 1000) ** 1000) ** 1000 }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ 'a'.center(999999999) }}",
    "{{ 'a'.ljust(999999999) }}",
    "{{ 'a' | center(999999999) }}",
    "{{ 'x' | indent(999999999, true) }}",
    "{{ [1] | batch(999999999, 'x') | list }}",
    "{{ 'aaaa' | replace('a', 'b' * 9000) | replace('b', 'c' * 9000) }}",
    "{{ ('a' * 9000).replace('a', 'b' * 9000) }}",
    "{{ (range(10000) | map('string') | list) | join('x' * 9000) }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('ab', 60) }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for x in [[1]] recursive %}{{ loop([[1]]) }}{% endfor %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
    "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ config.__class__ }}",
    "{{ foo.__dict__ }}",
    "{{ 'abc'|attr('__class__') }}",
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ ([1]|map(attribute='__class__')|list) }}",
    "{{ [].pop() }}",
    "{{ {}.update(a=1) }}",
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_template_is_contained(payload):
    started = time.monotonic()
    try:
        compiled = compile_templates(TemplateSource(subject="s", html=payload, text=payload))
        result = render_content(compiled, {"foo": {"a": 1}})
    except TemplateError:
        pass
    else:
        # A harmless undefined renders empty; nothing dangerous comes back.
        for part in (result.html, result.text):
            assert "class" not in part and "globals" not in part and "uid=" not in part
            assert len(part) <= 1_000_000
    assert time.monotonic() - started < 5


def test_output_cap_is_configurable():
    compiled = compile_templates(
        TemplateSource(subject="s", html="{% for i in range(100) %}{{ name }}{% endfor %}"),
        limits=RenderLimits(max_part_chars=500),
    )
    with pytest.raises(TemplateError, match="html"):
        render_content(compiled, {"name": "x" * 10})
    assert render_content(compiled, {"name": "x"}).html == "x" * 100


def test_time_cap_stops_a_slow_template():
    compiled = compile_templates(
        TemplateSource(
            subject="s",
            html="{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        ),
        limits=RenderLimits(max_seconds=0.2, max_iterations=10**9),
    )
    started = time.monotonic()
    with pytest.raises(TemplateError, match="longer than"):
        render_content(compiled, {})
    assert time.monotonic() - started < 2


def test_dunder_access_is_an_error_not_a_silent_blank():
    compiled = compile_templates(TemplateSource(subject="s", html="{{ ''.__class__ }}"))
    with pytest.raises(TemplateError, match="not allowed"):
        render_content(compiled, {})


def test_no_dangerous_globals():
    compiled = compile_templates(
        TemplateSource(subject="s", html="{{ lipsum }}{{ cycler }}{{ joiner }}{{ dict }}")
    )
    assert render_content(compiled, {}).html == ""


# --------------------------------------------------------------------------------------------
# Values built from many: each payload is small, each value it starts from is within the caps,
# and what it builds from them would be gigabytes (issue 14, item 4). They run in a child
# process (tests/mailkit/render_attacks.py) that measures CPU time and peak memory of each.


@pytest.fixture(scope="module")
def amplifier_results():
    try:
        child = subprocess.run(
            [sys.executable, "-m", "tests.mailkit.render_attacks"],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        stdout, stderr = child.stdout, child.stderr
    except subprocess.TimeoutExpired as exc:
        # A payload that runs away: the ones after it are reported missing, and fail.
        stdout, stderr = (exc.stdout or b"").decode(), (exc.stderr or b"").decode()
    results = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["name"]] = result
    assert results, stderr[-3000:]
    return results


@pytest.mark.parametrize("name", sorted(AMPLIFIERS))
def test_amplifying_template_is_refused_in_bounded_time_and_memory(amplifier_results, name):
    result = amplifier_results.get(name)
    assert result is not None, f"the child process died before {name!r}"
    assert result["outcome"] == "refused", result
    assert result["seconds"] < 2.0, result
    # The budget is 64 MB of values per part; what is allocated before a refusal stays near it.
    assert result["peak_mb"] < 100, result


NESTED = {
    "100 parentheses": "{{ " + "(" * 100 + "1" + ")" * 100 + " }}",
    "21 nested for": "{% for a in [1] %}" * 21 + "x" + "{% endfor %}" * 21,
    "100 nested if": "{% if 1 %}" * 100 + "x" + "{% endif %}" * 100,
    "200-term sum": "{{ " + " + ".join(["1"] * 200) + " }}",
    "1000 nested lists": "{{ " + "[" * 1000 + "]" * 1000 + " }}",
}
# Long or deep, but within what compiles: rendered, or a TemplateError, never a crash.
DEEP_BUT_MAYBE_FINE = {
    "300 chained filters": "{{ 1" + "|string" * 300 + " }}",
    "300-term condition": "{{ " + " and ".join(["(1 or 2)"] * 300) + " }}",
    "500 unary minus": "{{ " + "-" * 500 + "1 }}",
    "1000 not": "{{ " + "not " * 1000 + "1 }}",
    "30 nested macros": "".join(f"{{% macro m{i}() %}}" for i in range(30))
    + "x"
    + "{% endmacro %}" * 30,
    "60 nested blocks": "".join(f"{{% block b{i} %}}" for i in range(60)) + "{% endblock %}" * 60,
    "2000-term concatenation": "{{ " + " ~ ".join(["'a'"] * 2000) + " }}",
    "200 nested dicts": "{{ " + "{'a': " * 200 + "1" + "}" * 200 + " }}",
}


@pytest.mark.parametrize("name", sorted(NESTED))
def test_deeply_nested_template_is_a_clear_template_error(name):
    source = NESTED[name]
    with pytest.raises(TemplateError, match="nested too deeply|recurses too deeply") as caught:
        compiled = compile_templates(TemplateSource(subject="s", html=source))
        render_content(compiled, {})
    assert caught.value.field == "html"
    # The pre-flight's variable scan parses only: it may succeed, but it must not crash.
    try:
        template_variables(TemplateSource(subject=source, html=""))
    except TemplateError as exc:
        assert exc.field == "subject"


@pytest.mark.parametrize("name", sorted(DEEP_BUT_MAYBE_FINE))
def test_long_or_deep_template_renders_or_is_a_template_error(name):
    source = DEEP_BUT_MAYBE_FINE[name]
    try:
        render_content(compile_templates(TemplateSource(subject=source, html=source)), {})
        template_variables(TemplateSource(subject=source, html=source))
    except TemplateError as exc:
        assert exc.field in ("subject", "html")


def test_time_budget_holds_inside_one_filter_call():
    # One expression, no loop: select() scans a 100,000-character text 100,000 times.
    compiled = compile_templates(
        TemplateSource(
            subject="s",
            html="{% set b = 'x' * 99999 %}"
            "{{ (range(10000)|map('string')|list * 10)|select('in', b)|list|length }}",
        ),
        limits=RenderLimits(max_seconds=0.2),
    )
    started = time.process_time()
    with pytest.raises(TemplateError, match="longer than 0.2 seconds"):
        render_content(compiled, {})
    assert time.process_time() - started < 1.0


def test_macro_recursion_depth_is_a_clear_error():
    compiled = compile_templates(
        TemplateSource(subject="s", html="{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
    )
    with pytest.raises(TemplateError, match="more than 50 levels deep"):
        render_content(compiled, {})


def test_templates_within_the_limits_still_render():
    html = (
        "{% set ns = namespace(total=0, names=[]) %}"
        "{% for item in items %}{% set ns.total = ns.total + item.price %}"
        "{% set ns.names = ns.names + [item.name|upper] %}{% endfor %}"
        "{{ '{} items, {:,} total'.format(items|length, ns.total) }}|{{ ns.names|join(', ') }}|"
        "{{ '%s-%05d' % ('A', 42) }}|{{ items|tojson|length }}|{{ (items|map(attribute='name')"
        "|list)[1:]|join }}|{{ '%d'|format(123456) }}|{{ 'x\ny'|indent(2, true) }}"
    )
    items = [{"name": f"n{i}", "price": i} for i in range(3)]
    result = render_content(
        compile_templates(TemplateSource(subject="s", html=html)), {"items": items}
    )
    assert result.html == (
        f"3 items, 3 total|N0, N1, N2|A-00042|{len(json.dumps(items))}|n1n2|123456|  x\n  y"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ a }}" * 250_000, "longer than 200000 characters"),  # 2 MB: 18 s and 1.2 GB before
        ("{{ a }}" * 5_001, "more than 5000 tags"),
        ("{% if a %}x{% endif %}" * 2_501, "more than 5000 tags"),
    ],
)
def test_oversized_template_is_refused_before_compiling(source, message):
    started = time.process_time()
    with pytest.raises(TemplateError, match=message):
        compile_templates(TemplateSource(subject="s", html=source))
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize("value", ["1e20000000", "-9.5E+20000000", "1e1001"])
def test_number_filter_leaves_a_number_too_long_to_read_unchanged(value):
    compiled = compile_templates(TemplateSource(subject="s", html="{{ n|number(2) }}"))
    started = time.process_time()
    assert render_content(compiled, {"n": value}).html == value
    assert time.process_time() - started < 0.2


def test_number_filter_still_formats_a_thousand_digits():
    compiled = compile_templates(TemplateSource(subject="s", html="{{ n|number }}"))
    html = render_content(compiled, {"n": "9" * 1000}).html
    assert html.replace(",", "") == "9" * 1000
