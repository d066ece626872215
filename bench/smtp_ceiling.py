"""Raw SMTP ceiling: pre-rendered ~5 KB messages through send_envelopes, in messages/second.

    .venv/bin/python bench/smtp_ceiling.py --count 20000 [--host H --port P] [--pool-size 8]

Without --host, Postfix's smtp-sink is started on a free loopback port (plain SMTP, no TLS)
and stopped at the end. Install it with ``apt-get install -y postfix`` (the postfix daemon
itself is never started).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailkit.runner import send_envelopes, shutdown  # noqa: E402
from mailkit.smtp import Envelope, SendStatus, SmtpConfig  # noqa: E402

SMTP_SINK = "/usr/sbin/smtp-sink"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_smtp_sink(port: int) -> subprocess.Popen:
    sink = shutil.which("smtp-sink") or SMTP_SINK
    if not os.path.exists(sink):
        sys.exit("smtp-sink not found: DEBIAN_FRONTEND=noninteractive apt-get install -y postfix")
    command = [sink, "-c", "-8", "-m", "256"]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # smtp-sink refuses to run as root
    command += [f"127.0.0.1:{port}", "256"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None:
                sys.exit(f"smtp-sink exited: {process.stderr.read().decode()}")
            time.sleep(0.05)
    process.kill()
    sys.exit("smtp-sink did not start")


def message(i: int, size: int) -> bytes:
    head = (
        f"From: News <news@example.com>\r\nTo: <user{i}@example.org>\r\n"
        f"Subject: Benchmark message {i}\r\nMessage-ID: <{i}@bench.example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int, default=25)
    parser.add_argument("--pool-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--size", type=int, default=5000, help="approximate message size")
    args = parser.parse_args()

    sink = None
    host, port = args.host, args.port
    if host is None:
        host, port = "127.0.0.1", free_port()
        sink = start_smtp_sink(port)
    try:
        config = SmtpConfig(
            host=host,
            port=port,
            security="none",
            pool_size=args.pool_size,
            local_hostname="bench.skylark.test",
            max_messages_per_connection=1000,
        )
        envelopes = [
            Envelope(
                f"bounces+{i}@example.com",
                (f"user{i}@example.org",),
                message(i, args.size),
                tag=i,
            )
            for i in range(args.count)
        ]
        size = len(envelopes[0].data)
        # Warm-up: open the connections outside the measurement.
        list(send_envelopes(config, envelopes[: args.pool_size]))
        started = time.perf_counter()
        counts: dict[str, int] = {}
        for result in send_envelopes(config, envelopes, concurrency=args.concurrency):
            counts[result.status.value] = counts.get(result.status.value, 0) + 1
        elapsed = time.perf_counter() - started
        shutdown()
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait(5)
    sent = counts.get(SendStatus.SENT.value, 0)
    print(
        f"{args.count} messages of {size} bytes, pool_size={args.pool_size}, "
        f"concurrency={args.concurrency or args.pool_size}: {elapsed:.2f} s, "
        f"{args.count / elapsed:.0f} messages/s ({counts})"
    )
    if sent != args.count:
        sys.exit(1)


if __name__ == "__main__":
    main()
