"""Hostile templates end in a TemplateError (or a harmless empty value), never run code or hang."""

import time

import pytest

from delivery.errors import TemplateError
from delivery.render import RenderLimits, TemplateSource, compile_templates, render_content

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
