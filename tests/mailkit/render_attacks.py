"""Resource attacks on the template sandbox, run in a child process that measures each one.

Run as a script (``python -m tests.mailkit.render_attacks``): it renders every payload of
AMPLIFIERS under tracemalloc and an address-space limit, and prints one JSON line per payload
(outcome, CPU seconds, peak traced memory). The test reads those lines; the child process keeps
a payload that escapes the limits from taking the test run down with it.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import tracemalloc

# One 150-byte template, many ways to make the sandbox build gigabytes from small values.
BIG = "{% set b = 'x' * 999999 %}"
WIDE = "{% set b = '\U0001f600' * 999999 %}"  # four bytes a character
# Equal-length texts that differ only at the end: every comparison reads all of them, in C.
LONG = BIG + "{% set c = 'x' * 999998 ~ 'y' %}{% set b2 = 'x' * 999998 ~ 'x' %}"
AMPLIFIERS: dict[str, str] = {
    "in of a list of long texts": LONG + "{{ (b in [c] * 100000) or (b in [c] * 100000) }}",
    "not in of a list of long texts": LONG + "{{ b not in [c] * 100000 }}",
    "count of a long text": LONG + "{{ ([c] * 100000).count(b) }}",
    "equal lists of long texts": LONG + "{{ ([b] * 99999 + [c]) == ([b2] * 99999 + [c]) }}",
    "in test of long texts": LONG + "{{ ([b] * 100000)|select('in', [c] * 100000)|list|length }}",
    "sort of long texts": LONG + "{{ ([b] * 3000)|sort|length }}",
    "unique of long texts": LONG + "{{ ([b, b2] * 50000)|unique|list|length }}",
    "max of long texts": LONG + "{{ ([b] * 100000)|max|length }}",
    "format fields": BIG + "{{ '" + "{0}" * 40 + "'.format(b) }}",
    "format_map fields": BIG + "{{ '" + "{a}" * 40 + "'.format_map({'a': b}) }}",
    "format widths": "{{ ('{:9999}' * 100000).format(*([1] * 100000)) }}",
    "percent tuple": BIG + "{{ ('%s' * 1000) % ((b,) * 1000) }}",
    "percent mapping": BIG + "{{ '" + "%(a)s" * 40 + "' % {'a': b} }}",
    "percent widths": "{{ ('%9999d' * 100000) % ((1,) * 100000) }}",
    "percent repr of a list": BIG + "{{ '%r' % ([b] * 1000,) }}",
    "format filter": BIG + "{{ ('%s' * 1000)|format(*([b] * 1000)) }}",
    "join filter": BIG + "{{ ([b] * 1000)|join }}",
    "join attribute": BIG + "{{ ([{'n': b}] * 1000)|join(attribute='n') }}",
    "join method": BIG + "{{ ''.join([b] * 1000) }}",
    "join literal list": BIG + "{{ [" + "b, " * 40 + "]|join }}",
    "list repeated in output": BIG + "{{ [b] * 1000 }}",
    "string filter of a list": BIG + "{{ ([b] * 1000)|string }}",
    "upper filter of a list": BIG + "{{ ([b] * 1000)|upper }}",
    "tojson of a list": BIG + "{{ ([b] * 1000)|tojson }}",
    "tojson nested": BIG + "{% set l = [b] * 999 %}{{ [l, l, l, l, l, l, l, l]|tojson }}",
    "tojson indent": "{{ ([[1]] * 100000)|tojson(indent=9999) }}",
    "tojson of a dict": BIG + "{{ {'a': [b] * 500, 'c': {'d': [b] * 500}}|tojson }}",
    "tojson chain": "{% set s = '\"' * 9000 %}{{ s|tojson|tojson|tojson|tojson|tojson|tojson"
    "|tojson|tojson|tojson|tojson|tojson|tojson|tojson|tojson|tojson|tojson }}",
    "concat of three": BIG + "{{ (b ~ b) ~ b }}",
    "concat of a list": BIG + "{{ 'x' ~ ([b] * 1000) }}",
    "dict items in output": BIG + "{{ {'a': [b] * 1000}.items() }}",
    "namespace in output": BIG + "{% set ns = namespace(a=[b] * 1000) %}{{ ns }}",
    "xmlattr": BIG + "{{ {'a': [b] * 1000}|xmlattr }}",
    "urlencode of a list": BIG + "{{ {'a': [b] * 1000}|urlencode }}",
    "indent width": "{{ ('x\\n' * 499999)|indent(9999) }}",
    "indent string": "{{ ('x\\n' * 499999)|indent('y' * 9999) }}",
    "wordwrap wrapstring": "{{ ('x ' * 499999)|wordwrap(1, true, 'y' * 9000) }}",
    "urlize target": "{{ ('a@b.co ' * 140000)|urlize(target='t' * 9000) }}",
    "replace chain": "{{ ('a' * 9000)|replace('a', 'b' * 9000) }}",
    "expandtabs": "{{ ('\\t' * 999999).expandtabs(10000) }}",
    "bytes": "{{ 'a'.encode() * 10 ** 9 }}",
    "int to_bytes": "{{ (1).to_bytes(10 ** 9) }}",
    "encode through attr": "{{ ('a'|attr('encode'))() * 10 ** 9 }}",
    "encode through format": "{{ '{0.encode}'.format('a') }}",
    "integer squaring": "{% set ns = namespace(n=2 ** 99999) %}{% for i in range(40) %}"
    "{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n > 1 }}",
    "sum of lists": "{% set l = [[1] * 1000] * 1000 %}{{ l|sum(start=[])|length }}",
    "split into a million": "{{ ('x' * 999999).split('x')|length }}",
    "wide characters": WIDE + "{{ '" + "{0}" * 40 + "'.format(b) }}",
    "recursion keeps copies": "{% macro f(n) %}{% set s = ('y' * 999990) ~ n %}{% if n %}"
    "{{ f(n - 1) }}{% endif %}{{ s|length }}{% endmacro %}{{ f(45) }}",
    "namespace keeps slices": BIG + "{% set ns = namespace(l=[]) %}{% for i in range(500) %}"
    "{% set ns.l = ns.l + [b[i:]] %}{% endfor %}{{ ns.l|length }}",
    "namespace keeps split parts": BIG + "{% set ns = namespace(l=[]) %}"
    "{% for i in range(500) %}{% set ns.l = ns.l + b.split('x', 1) %}{% endfor %}"
    "{{ ns.l|length }}",
    "batch of a big list": BIG + "{{ ([b] * 100000)|batch(1)|list|string }}",
    "loop recursion": "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    "block self-reference": "{% block a %}{{ self.a() }}{% endblock %}",
    "macro fan-out": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
    "{% endmacro %}{{ f(40) }}",
    "select scanning a big text": BIG + "{{ (range(10000)|map('string')|list * 10)"
    "|select('in', b)|list|length }}",
}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from mailkit.errors import TemplateError
    from mailkit.render import TemplateSource, compile_templates, render_content

    # Whatever escapes the limits fails here (MemoryError) instead of swapping the machine.
    cap = 3 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    names = sys.argv[1:] or list(AMPLIFIERS)
    tracemalloc.start()
    for name in names:
        payload = AMPLIFIERS[name]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        started = time.process_time()
        outcome, message = "accepted", ""
        try:
            compiled = compile_templates(TemplateSource(subject="s", html=payload, text=payload))
            content = render_content(compiled, {})
            message = str(len(content.html))
        except TemplateError as exc:
            outcome, message = "refused", str(exc)
        except BaseException as exc:  # noqa: BLE001 - the report says what escaped
            outcome, message = "crashed", f"{type(exc).__name__}: {exc}"[:300]
        seconds = time.process_time() - started
        peak = tracemalloc.get_traced_memory()[1] - before
        line = {"name": name, "outcome": outcome, "message": message}
        line.update(seconds=round(seconds, 3), peak_mb=round(peak / 1024**2, 1))
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
