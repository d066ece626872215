"""Tracking endpoints under load, and the report of a 1,000,000-recipient campaign.

    .venv/bin/python bench/tracking_load.py                # gunicorn + wrk (or a Python client)
    .venv/bin/python bench/tracking_load.py --seconds 20 --workers 2
    .venv/bin/python bench/tracking_load.py --report       # PostgreSQL, 1M deliveries

Load mode: a fresh SQLite database in a temporary directory, one campaign of 1,000 recipients
with two links, gunicorn (DEBUG off) and the embedded Redis; wrk (apt-get install wrk) hits
the open pixel and the click redirect with per-recipient URLs; then the buffer is flushed and
the counts checked against the requests made. Prints requests/s per endpoint.
Report mode: builds the campaign with COPY in postgres://postgres@127.0.0.1:5432/skylark_bench
(created when missing) and times the report page render through the admin.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


# --- load -------------------------------------------------------------------------------------


def _python_client(urls: list[str], seconds: float, threads: int) -> tuple[int, int]:
    import http.client

    done = [0]
    errors = [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def run():
        n = e = 0
        conn = None
        while time.monotonic() < stop:
            url = random.choice(urls)
            host, _, path = url.removeprefix("http://").partition("/")
            if conn is None:
                conn = http.client.HTTPConnection(host, timeout=10)
            try:
                conn.request("GET", "/" + path, headers={"User-Agent": "Mozilla/5.0 (X11) Bench"})
                r = conn.getresponse()
                r.read()
                n += 1
                if r.status >= 400:
                    e += 1
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except OSError:
                e += 1
                conn = None
        with lock:
            done[0] += n
            errors[0] += e

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return done[0], errors[0]


WRK_LUA = """
local urls = {}
for line in io.lines("%s") do urls[#urls + 1] = line end
request = function()
  return wrk.format("GET", urls[math.random(#urls)], {["User-Agent"] = "Mozilla/5.0 (X11) Bench"})
end
"""


def _wrk(base: str, paths: list[str], seconds: int, tmp: Path) -> tuple[float, str]:
    listing = tmp / "paths.txt"
    listing.write_text("\n".join(paths) + "\n")
    script = tmp / "urls.lua"
    script.write_text(WRK_LUA % listing)
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = next(
        float(line.split()[1]) for line in out.splitlines() if line.startswith("Requests/sec")
    )
    return rate, out


def load(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="skylark-track-"))
    port = _free_port()
    env = {
        # Its own SQLite file and its own embedded Redis: nothing shared with other runs.
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "EDM_VAR_DIR": str(tmp),
        "DEBUG": "0",
        "EDM_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "EDM_CELERY_QUEUE": f"bench-{port}",
    }
    _setup_django(env)
    from django.conf import settings
    from django.core.management import call_command

    from config import embedded_redis

    redis_process = embedded_redis.start(settings.VAR_DIR) if settings.EDM_EMBEDDED_REDIS else None
    db_path = settings.DATABASES["default"]["NAME"]
    print(f"database {db_path}, DEBUG={settings.DEBUG}")
    call_command("migrate", verbosity=0)

    from campaigns import tracking as tracking_services
    from campaigns.models import Campaign
    from campaigns.sending.prepare import campaign_prepare
    from config.redis import get_redis
    from contacts.models import Contact
    from delivery import tracking
    from delivery.models import Delivery

    campaign = Campaign.objects.create(
        name=f"Bench {port}",
        from_email="news@skylark.test",
        html='<a href="https://example.org/a">A</a> <a href="https://example.org/b">B</a>',
        subject="s",
        status="sent",
    )
    contacts = Contact.objects.bulk_create(
        [Contact(email=f"bench{port}-{i}@example.com") for i in range(1000)]
    )
    past = time.time() - 3600
    from datetime import UTC, datetime

    deliveries = Delivery.objects.bulk_create(
        [
            Delivery(
                campaign=campaign,
                contact=c,
                email=c.email,
                status="sent",
                sent_at=datetime.fromtimestamp(past, tz=UTC),
            )
            for c in contacts
        ]
    )
    campaign_prepare(campaign)
    links = list(campaign.links.values_list("pk", flat=True))
    opens = [f"/o/{tracking.recipient_token('open', d.pk)}.gif" for d in deliveries]
    clicks = [
        f"/c/{tracking.click_token(d.pk, campaign.pk)}/{tracking.link_token(campaign.pk, link)}/"
        for d in deliveries
        for link in links
    ]

    server_env = {**os.environ, **env}
    gunicorn = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "config.wsgi",
            "-w",
            str(args.workers),
            "-k",
            args.worker_class,
            "--threads",
            str(args.threads),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=server_env,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        results = {}
        for name, paths in (("open pixel", opens), ("click redirect", clicks)):
            if shutil.which("wrk") and not args.python_client:
                rate, _ = _wrk(base, paths, args.seconds, tmp)
                results[name] = rate
            else:
                done, errors = _python_client([base + p for p in paths], args.seconds, 16)
                results[name] = done / args.seconds
                if errors:
                    print(f"  {name}: {errors} errors")
            print(f"{name}: {results[name]:,.0f} requests/s over {args.seconds}s")
        buffered = get_redis().llen(tracking_services.BUFFER_KEY)
        started = time.monotonic()
        written = 0
        while True:
            n = tracking_services.tracking_flush(budget_seconds=600)
            written += n
            if not n:
                break
        flush_seconds = time.monotonic() - started
        print(
            f"buffered hits {buffered:,}, written {written:,} in {flush_seconds:.1f}s "
            f"({written / flush_seconds if flush_seconds else 0:,.0f} hits/s flushed)"
        )
    finally:
        gunicorn.terminate()
        gunicorn.wait(10)
        embedded_redis.stop(redis_process)
        shutil.rmtree(tmp, ignore_errors=True)


# --- report ----------------------------------------------------------------------------------

BENCH_DB = "postgres://postgres@127.0.0.1:5432/skylark_bench"


def report(args: argparse.Namespace) -> None:
    subprocess.run(
        ["createdb", "-h", "127.0.0.1", "-U", "postgres", "skylark_bench"], capture_output=True
    )
    _setup_django({"DATABASE_URL": BENCH_DB, "DEBUG": "0"})
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from campaigns.models import Campaign, CampaignLink, CampaignStats
    from contacts.models import Contact

    call_command("migrate", verbosity=0)
    n = args.recipients
    campaign = Campaign.objects.filter(name=f"Report bench {n}").first()
    if campaign is None:
        started = time.monotonic()
        campaign = Campaign.objects.create(
            name=f"Report bench {n}",
            from_email="news@skylark.test",
            subject="s",
            html="x",
            status="sent",
        )
        with connection.cursor() as cur:
            first = (Contact.objects.order_by("-id").values_list("id", flat=True).first() or 0) + 1
            cur.execute(
                "INSERT INTO contacts_contact (email, name, attributes, status, created_at, updated_at) "
                "SELECT 'rb' || g || '@' || (ARRAY['gmail.com','outlook.com','yahoo.com','qq.com','163.com','example.org'])[1 + g %% 6], "
                "'', '{}', 'active', now() - (g %% 30) * interval '1 day', now() FROM generate_series(%s, %s) g",
                [first, first + n - 1],
            )
            statuses = "(ARRAY['sent','sent','sent','sent','sent','sent','sent','sent','sent','sent','sent','sent','sent','sent','sent','sent','sent','sent','bounced','failed'])[1 + c.id %% 20]"
            cur.execute(
                "INSERT INTO delivery_delivery (campaign_id, contact_id, email, status, attempts, message_id, "
                "enhanced_status, smtp_reply, reason, sent_at, updated_at) "
                f"SELECT %s, c.id, c.email, {statuses}, 1, '', '', '', '', "
                "now() - interval '2 hours' + (c.id %% 3600) * interval '1 second', now() "
                "FROM contacts_contact c WHERE c.email LIKE 'rb%%' AND c.id >= %s",
                [campaign.pk, first],
            )
            cur.execute("ANALYZE delivery_delivery")
        # Counters as the flush and the tail would have left them.
        CampaignStats.objects.update_or_create(
            campaign=campaign,
            defaults=dict(
                opens=310_000,
                unique_opens=240_000,
                machine_opens=120_000,
                unique_machine_opens=90_000,
                clicks=41_000,
                unique_clicks=30_000,
                machine_clicks=12_000,
                unique_machine_clicks=8_000,
                unsubscribes=1_900,
                complaints=450,
                async_bounces=3_000,
            ),
        )
        from datetime import timedelta

        from django.utils import timezone

        from campaigns.tracking_models import CampaignDomainStats, CampaignMinute

        start = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=2)
        CampaignMinute.objects.bulk_create(
            CampaignMinute(
                campaign=campaign,
                minute=start + timedelta(minutes=m),
                sent=16_000,
                opens=4_000 // (1 + m // 60),
                machine_opens=1_500,
                clicks=600,
                machine_clicks=150,
            )
            for m in range(62)
        )
        CampaignDomainStats.objects.bulk_create(
            CampaignDomainStats(
                campaign=campaign,
                domain=d,
                sent=n // 6,
                bounced=n // 120,
                unique_opens=n // 25,
                unique_clicks=n // 200,
                complaints=75,
            )
            for d in ("gmail.com", "outlook.com", "yahoo.com", "qq.com", "163.com", "example.org")
        )
        CampaignLink.objects.bulk_create(
            CampaignLink(
                campaign=campaign,
                url=f"https://example.org/p/{i}",
                url_hash=str(i),
                position=i,
                clicks=4000 - i * 300,
                unique_clicks=3000 - i * 200,
                machine_clicks=900,
            )
            for i in range(8)
        )
        print(f"built {n:,} recipients in {time.monotonic() - started:.1f}s")
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(
        username="bench", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    url = f"/admin/campaigns/campaign/{campaign.pk}/report/"
    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        response = client.get(url)
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, response.status_code
    count = campaign.deliveries.count()
    print(
        f"report of {count:,} recipients: best {min(timings) * 1000:.0f} ms, "
        f"median {sorted(timings)[len(timings) // 2] * 1000:.0f} ms over {len(timings)} renders"
    )
    started = time.perf_counter()
    response = client.get(url.replace("report/", "report.csv"))
    lines = sum(chunk.count(b"\n") for chunk in response.streaming_content)
    print(f"CSV export: {lines:,} lines in {time.perf_counter() - started:.1f}s (streamed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--python-client", action="store_true")
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    report(args) if args.report else load(args)


if __name__ == "__main__":
    main()
