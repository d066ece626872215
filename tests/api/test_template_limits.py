"""Template resource attacks over HTTP: a small request that would build gigabytes is a 422."""

from __future__ import annotations

import json
import resource
import time

import pytest

from api.models import TransactionalMessage
from campaigns.models import Template
from tests.api.conftest import auth

# Each is one small request; before the fix each made the web process allocate 1-3 GB.
ATTACKS = {
    "repeated format fields": "{% set b = 'x' * 999999 %}{{ '" + "{0}" * 30 + "'.format(b) }}",
    "percent of a repeated tuple": "{% set b = 'x' * 999999 %}{{ ('%s' * 1000) % ((b,) * 1000) }}",
    "join of a repeated list": "{% set b = 'x' * 999999 %}{{ ([b] * 1000)|join }}",
    "tojson of a repeated list": "{% set b = 'x' * 999999 %}{{ ([b] * 1000)|tojson }}",
    "request data repeated": "{{ ([big] * 10000)|join }}",
}
NESTED = {
    "100 parentheses": "{{ " + "(" * 100 + "1" + ")" * 100 + " }}",
    "21 nested for": "{% for a in [1] %}" * 21 + "x" + "{% endfor %}" * 21,
    "100 nested if": "{% if 1 %}" * 100 + "x" + "{% endif %}" * 100,
    "200-term sum": "{{ " + " + ".join(["1"] * 200) + " }}",
}


def _post(client, secret, body):
    return client.post(
        "/api/v1/messages", json.dumps(body), content_type="application/json", **auth(secret)
    )


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_amplifying_inline_template_is_refused_with_a_json_422(client, api_key, name):
    _, secret = api_key
    body = {"to": "ann@example.com", "subject": "Hi", "html": ATTACKS[name]}
    body["data"] = {"big": "y" * 100_000}
    peak_before, started = _peak_mb(), time.process_time()
    response = _post(client, secret, body)
    assert response.status_code == 422, response.content
    assert response["Content-Type"].startswith("application/json")
    assert "longer than 1000000 characters" in response.json()["detail"]
    assert not TransactionalMessage.objects.exists()
    assert time.process_time() - started < 2
    # ru_maxrss is the process's high-water mark: it must not have moved by gigabytes.
    assert _peak_mb() - peak_before < 150


@pytest.mark.parametrize("name", sorted(NESTED))
def test_deeply_nested_inline_template_is_a_json_422_not_a_500(client, api_key, name):
    _, secret = api_key
    body = {"to": "ann@example.com", "subject": "Hi", "html": NESTED[name]}
    response = _post(client, secret, body)
    assert response.status_code == 422, response.content
    assert "nested too deeply" in response.json()["detail"]
    assert not TransactionalMessage.objects.exists()


def test_stored_template_with_an_amplifier_is_refused(client, api_key, db):
    _, secret = api_key
    Template.objects.create(name="bomb", subject="Hi", html=ATTACKS["join of a repeated list"])
    response = _post(client, secret, {"to": "ann@example.com", "template": "bomb"})
    assert response.status_code == 422, response.content
    assert "longer than 1000000 characters" in response.json()["detail"]
    assert not TransactionalMessage.objects.exists()


def test_oversized_inline_template_is_refused_before_compiling(client, api_key):
    _, secret = api_key
    body = {"to": "ann@example.com", "subject": "Hi", "html": "{{ a }}" * 140_000}  # 1 MB
    started = time.process_time()
    response = _post(client, secret, body)
    assert response.status_code == 422, response.content
    assert "longer than 200000 characters" in response.json()["detail"]
    assert time.process_time() - started < 1.5


def test_number_filter_of_a_huge_exponent_passes_through_in_bounded_memory(client, api_key):
    # Decimal("1e20000000") formatted as digits is 27 MB in one C call the clock cannot stop;
    # 1e900000000 made the web worker reach 3.6 GB in 8 s. A number no one reads passes through.
    _, secret = api_key
    body = {"to": "ann@example.com", "subject": "Hi", "html": "<p>{{ n|number }}</p>"}
    body["data"] = {"n": "1e20000000"}
    peak_before, started = _peak_mb(), time.process_time()
    response = _post(client, secret, body)
    assert response.status_code == 202, response.content
    assert time.process_time() - started < 1
    assert _peak_mb() - peak_before < 50
