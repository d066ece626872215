"""Transactional API under load, alone and beside a 100,000-recipient campaign.

    .venv/bin/python bench/api_load.py [--seconds 20] [--connections 32] [--recipients 100000]
        [--database-url postgres://postgres@127.0.0.1:5432/skylark_bench] [--skip-campaign]
        [--workers 2] [--threads 4] [--no-keep-alive]

1. Accept rate: gunicorn serves the app as docs/operations.md recommends (--workers 2
   gthread workers, --threads 4, keep-alive; --no-keep-alive: sync workers and a connection
   per request); an asyncio HTTP client with --connections concurrent requests posts
   transactional messages (inline subject/text, one recipient each) for --seconds and
   counts the 202s per second. No priority worker runs in
   this phase, so what is measured is the API: auth, rate limit, compose, INSERT, enqueue.
2. Priority lane under a campaign: a campaign to --recipients contacts is sending through
   Postfix's smtp-sink (campaign worker, default queue), while the API gets --rate messages
   per second; a priority worker (EDM_PRIORITY_QUEUE) sends them to a second smtp-sink. The
   latency of each transactional message is sent_at - created_at of its row: from the API
   call's INSERT to the 250 of the sink (sent_at is taken right after the reply). Prints
   p50/p95/max and how far the campaign was.

Everything (Redis unless REDIS_URL, SQLite unless --database-url, sinks, gunicorn, workers)
is started here and stopped at the end. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from smtp_ceiling import free_port, start_smtp_sink  # noqa: E402

BODY = json.dumps(
    {
        "to": "customer@example.org",
        "to_name": "Customer",
        "subject": "Your order {{ order }}",
        "html": "<p>Hello {{ name }}, order {{ order }} is confirmed.</p>",
        "data": {"order": 1234},
        "tags": ["receipt"],
    }
).encode()


def configure(args: argparse.Namespace, var_dir: Path, sink_port: int) -> dict[str, str]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "EDM_VAR_DIR": str(var_dir),
        "EDM_CELERY_QUEUE": queue,
        "EDM_PRIORITY_QUEUE": f"{queue}-priority",
        "EDM_SMTP_URL": f"smtp://127.0.0.1:{sink_port}?security=none",
        "EDM_API_RATE_PER_MINUTE": "0",
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    else:
        env["EDM_SQLITE_PATH"] = str(var_dir / "bench.sqlite3")
    os.environ.update(env)
    return env


_REDIS = None  # the embedded Redis this bench started, stopped at the end


def prepare_database(args: argparse.Namespace) -> str:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from config import embedded_redis

    global _REDIS
    if settings.EDM_EMBEDDED_REDIS:
        _REDIS = embedded_redis.start(settings.VAR_DIR)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    call_command("migrate", verbosity=0)
    from api.models import Scope
    from api.services import api_key_create

    _, secret = api_key_create(application="bench", scopes=[Scope.MESSAGES_SEND])
    return secret


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=REPO, env={**os.environ, **env}, stdout=log.open("ab"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def start_gunicorn(
    env: dict[str, str],
    port: int,
    log: Path,
    *,
    keep_alive: bool = False,
    workers: int = 2,
    threads: int = 4,
) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gunicorn", "config.wsgi", "-w", str(workers)]
    argv += ["-b", f"127.0.0.1:{port}", "--backlog", "2048", "--log-level", "warning"]
    if keep_alive:  # threaded workers keep client connections open between requests
        argv += ["-k", "gthread", "--threads", str(threads), "--keep-alive", "30"]
    process = start(argv, env, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    sys.exit(f"gunicorn did not start; see {log}")


def start_worker(env: dict[str, str], queue: str, concurrency: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=WARNING"]
    argv += [f"--concurrency={concurrency}", "-Q", queue, "--without-gossip", "--without-mingle"]
    argv += ["-n", f"{queue.replace(',', '+')}@%h"]
    return start(argv, env, log)


async def _post(port: int, secret: str, body: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        f"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    await reader.read()  # until the server closes (sync workers close every connection)
    writer.close()
    return int(status_line.split()[1]) if status_line else 0


class _KeepAliveClient:
    """One HTTP/1.1 connection reused for every request (an application's HTTP client)."""

    def __init__(self, port: int, secret: str) -> None:
        self.port, self.secret = port, secret
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: bytes) -> int:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        writer.write(
            (
                f"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {self.secret}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length, closing = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"connection" and b"close" in value.lower():
                closing = True
        await reader.readexactly(length)
        if closing:
            writer.close()
            self.streams = None
        return int(head.split()[1])


async def load(
    port: int,
    secret: str,
    *,
    seconds: float,
    connections: int,
    rate: float = 0,
    keep_alive: bool = False,
):
    """Post for `seconds` with `connections` in flight (or at `rate` per second); codes."""
    codes: dict[int, int] = {}
    per_second: list[int] = []
    deadline = time.monotonic() + seconds
    tick = {"next": time.monotonic()}

    async def client() -> None:
        session = _KeepAliveClient(port, secret) if keep_alive else None
        while time.monotonic() < deadline:
            if rate:
                now = time.monotonic()
                wait = tick["next"] - now
                tick["next"] = max(tick["next"], now) + 1 / rate
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                code = await (session.post(BODY) if session else _post(port, secret, BODY))
            except (OSError, asyncio.IncompleteReadError):
                code = 0
                if session is not None:
                    session.streams = None
            codes[code] = codes.get(code, 0) + 1
            second = int(seconds - (deadline - time.monotonic()))
            while len(per_second) <= second:
                per_second.append(0)
            if code == 202:
                per_second[second] += 1

    await asyncio.gather(*(client() for _ in range(connections)))
    return codes, per_second


def phase_accept(args, env, secret, logs) -> None:
    port = free_port()
    keep_alive = args.keep_alive
    gunicorn = start_gunicorn(
        env,
        port,
        logs / "gunicorn.log",
        keep_alive=keep_alive,
        workers=args.workers,
        threads=args.threads,
    )
    try:
        asyncio.run(load(port, secret, seconds=2, connections=8, keep_alive=keep_alive))
        started = time.perf_counter()
        codes, per_second = asyncio.run(
            load(
                port,
                secret,
                seconds=args.seconds,
                connections=args.connections,
                keep_alive=keep_alive,
            )
        )
        elapsed = time.perf_counter() - started
    finally:
        gunicorn.terminate()
        gunicorn.wait(30)
    accepted = codes.get(202, 0)
    full = per_second[:-1] or per_second
    print(f"accept phase: {accepted} accepted in {elapsed:.1f} s = {accepted / elapsed:.0f}/s")
    print(f"  per second: min {min(full)}, median {statistics.median(full):.0f}, max {max(full)}")
    print(f"  status codes: {dict(sorted(codes.items()))}")


def phase_priority(args, env, secret, logs) -> None:
    from django.utils import timezone

    from api.models import TransactionalMessage
    from campaigns.models import Campaign
    from campaigns.services import campaign_create, campaign_send
    from config.celery import app
    from contacts.models import Contact, ContactList, Subscription

    # Phase 1 left its messages' tasks on the priority queue (no worker ran): drop them and
    # their rows, so that this phase measures its own messages, not a backlog.
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(env["EDM_PRIORITY_QUEUE"])
    TransactionalMessage.objects.all().delete()
    contact_list = ContactList.objects.create(name="Bench")
    for begin in range(0, args.recipients, 5000):
        contacts = Contact.objects.bulk_create(
            Contact(email=f"user{i}@example{i % 50}.org", name=f"User {i}")
            for i in range(begin, min(begin + 5000, args.recipients))
        )
        Subscription.objects.bulk_create(
            Subscription(contact=c, contact_list=contact_list) for c in contacts
        )
    campaign = campaign_create(
        name="Bench",
        list_names=["Bench"],
        subject="News for {{ name }}",
        html='<p>Hello {{ name }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>',
        from_email="news@bench.skylark.test",
    )
    priority_sink_port = free_port()
    priority_sink = start_smtp_sink(priority_sink_port)
    priority_env = {**env, "EDM_SMTP_URL": f"smtp://127.0.0.1:{priority_sink_port}?security=none"}
    port = free_port()
    processes = [
        start_gunicorn(env, port, logs / "gunicorn.log"),
        start_worker(
            env,
            f"{env['EDM_CELERY_QUEUE']},{env['EDM_CELERY_QUEUE']}-control",
            2,
            logs / "campaign-worker.log",
        ),
        start_worker(priority_env, env["EDM_PRIORITY_QUEUE"], 1, logs / "priority-worker.log"),
        priority_sink,
    ]
    try:
        deadline = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5)) < 2:
            if time.monotonic() > deadline:
                sys.exit(f"workers did not start; see {logs}")
        campaign_send(campaign_id=campaign.pk)
        while campaign.deliveries.filter(status="sent").count() < 2000:
            time.sleep(0.2)
        window_start = timezone.now()
        codes, _ = asyncio.run(
            load(port, secret, seconds=args.priority_seconds, connections=4, rate=args.rate)
        )
        time.sleep(3)  # let the last ones go out
        sent_during = campaign.deliveries.filter(
            status="sent", updated_at__gte=window_start
        ).count()
        status = Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)
        rows = TransactionalMessage.objects.filter(created_at__gte=window_start)
        latencies = sorted(
            (sent - created).total_seconds()
            for created, sent in rows.filter(status="sent").values_list("created_at", "sent_at")
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
    accepted = codes.get(202, 0)
    print(
        f"priority phase: {accepted} accepted at ~{args.rate}/s for {args.priority_seconds} s, "
        f"{len(latencies)} sent; campaign sent {sent_during} meanwhile "
        f"({sent_during / (args.priority_seconds + 3):.0f}/s), status {status}"
    )
    if latencies:
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(
            f"  API INSERT -> sink 250: p50 {statistics.median(latencies) * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
        )


def _drop_queues(env: dict[str, str]) -> None:
    """The tasks this run left in Redis (nobody consumes them once it ends)."""
    import redis
    from django.conf import settings

    try:
        client = redis.Redis.from_url(settings.REDIS_URL)
        queue = env["EDM_CELERY_QUEUE"]  # the priority and control queues share its prefix
        client.delete(*client.keys(f"{queue}*"), *client.keys(f"_kombu.binding*.{queue}*"), queue)
    except (redis.RedisError, KeyError):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=10, help="API calls/s in phase 2")
    parser.add_argument("--priority-seconds", type=float, default=30)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--skip-campaign", action="store_true")
    parser.add_argument(
        "--keep-alive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gthread workers (the deployment docs/operations.md recommends) and clients that "
        "reuse their connections; --no-keep-alive: sync workers, a connection per request",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (accept phase)")
    parser.add_argument("--threads", type=int, default=4, help="threads a gthread worker runs")
    parser.add_argument("--skip-accept", action="store_true")
    args = parser.parse_args()
    var_dir = Path(tempfile.mkdtemp(prefix="skylark-api-bench-"))
    campaign_sink_port = free_port()
    env = configure(args, var_dir, campaign_sink_port)
    sink = start_smtp_sink(campaign_sink_port)
    logs = var_dir / "log"
    logs.mkdir()
    try:
        secret = prepare_database(args)
        print(f"{os.cpu_count()} CPUs; database {'PostgreSQL' if args.database_url else 'SQLite'}")
        if not args.skip_accept:
            phase_accept(args, env, secret, logs)
        if not args.skip_campaign:
            phase_priority(args, env, secret, logs)
    finally:
        sink.terminate()
        sink.wait(10)
        _drop_queues(env)
        from config import embedded_redis

        embedded_redis.stop(_REDIS)
        print(f"logs in {logs}")


if __name__ == "__main__":
    main()
