"""send_envelopes: the pool used from synchronous code through the background loop."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from mailkit import runner
from mailkit.runner import send_envelopes, shutdown
from mailkit.smtp import Envelope, SendStatus, smtp_config_from_url

pytestmark = pytest.mark.timeout(30)

BODY = b"Subject: batch\r\n\r\nHello\r\n"


@pytest.fixture(autouse=True)
def _fresh_runner():
    yield
    shutdown()


def config_for(server, **overrides):
    options = {"ca_file": server.ca_file, "timeout": 3.0, "local_hostname": "skylark.test"}
    options.update(overrides)
    return smtp_config_from_url(server.url, **options)


def envelopes(count: int):
    for i in range(count):
        yield Envelope("bounces@example.com", (f"r{i}@example.org",), BODY, tag=i)


def test_results_for_every_envelope_with_tags(smtp_server):
    results = list(send_envelopes(config_for(smtp_server), envelopes(25)))

    assert sorted(r.tag for r in results) == list(range(25))
    assert all(r.status is SendStatus.SENT for r in results)
    assert len(smtp_server.wait_for_messages(25)) == 25


def test_pools_are_reused_across_calls(smtp_server):
    config = config_for(smtp_server, pool_size=2)

    list(send_envelopes(config, envelopes(10)))
    list(send_envelopes(config, envelopes(10)))

    assert len(smtp_server.connections) <= 2
    assert sum(c.messages for c in smtp_server.connections) == 20


def test_envelopes_are_pulled_lazily_with_bounded_concurrency(smtp_server):
    pulled = 0

    def source():
        nonlocal pulled
        for envelope in envelopes(20):
            pulled += 1
            yield envelope

    iterator = send_envelopes(config_for(smtp_server), source(), concurrency=3)
    first = next(iterator)

    assert first.status is SendStatus.SENT
    assert pulled <= 4  # three in flight, plus at most one refill
    assert len(list(iterator)) == 19


def test_results_come_in_completion_order(smtp_server):
    smtp_server.script("rcpt", "250 OK", recipient="r0@example.org", stall=1.0)

    tags = [r.tag for r in send_envelopes(config_for(smtp_server), envelopes(4), concurrency=4)]

    assert tags[-1] == 0
    assert sorted(tags) == [0, 1, 2, 3]


def test_failures_are_results_not_exceptions(smtp_server):
    smtp_server.script("rcpt", "550 5.1.1 No such user", recipient="r1@example.org")

    results = {r.tag: r for r in send_envelopes(config_for(smtp_server), envelopes(3))}

    assert results[1].status is SendStatus.PERMANENT
    assert results[1].enhanced == "5.1.1"
    assert results[0].status is results[2].status is SendStatus.SENT


def test_before_send_hook_runs_on_the_loop_for_each_envelope(smtp_server):
    seen = []

    async def before_send(envelope):
        asyncio.get_running_loop()  # raises unless on the loop
        seen.append((envelope.tag, threading.current_thread().name))

    list(send_envelopes(config_for(smtp_server), envelopes(5), before_send=before_send))

    assert sorted(tag for tag, _ in seen) == list(range(5))
    assert {name for _, name in seen} == {"skylark-smtp-loop"}


def test_shutdown_quits_connections_and_a_new_call_starts_again(smtp_server):
    config = config_for(smtp_server)
    list(send_envelopes(config, envelopes(3)))

    shutdown()

    smtp_server.wait_for(lambda: len(smtp_server.commands("QUIT")) == len(smtp_server.connections))
    assert all(r.status is SendStatus.SENT for r in send_envelopes(config, envelopes(2)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_its_own_loop(smtp_server):
    config = config_for(smtp_server, pool_size=1)
    list(send_envelopes(config, envelopes(1)))
    parent_runner = runner._runner

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: send through a fresh loop, report, and exit without cleanup
        try:
            results = list(send_envelopes(config, envelopes(2)))
            ok = runner._runner is not parent_runner and all(
                r.status is SendStatus.SENT for r in results
            )
            os.write(write_end, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read_end, 10)
    os.close(read_end)

    assert answer == b"ok"
    assert len(smtp_server.wait_for_messages(3)) == 3
    # The parent's pool still works after the child used (and abandoned) its copy.
    assert all(r.status is SendStatus.SENT for r in send_envelopes(config, envelopes(1)))
