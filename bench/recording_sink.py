"""A recording SMTP sink: accepts every message and counts each recipient, writes nothing.

    .venv/bin/python bench/recording_sink.py --port 2525 --dump /tmp/received.json

A minimal asyncio protocol (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; PIPELINING,
8BITMIME, SMTPUTF8 advertised; no DSN, no CHUNKING): much cheaper than aiosmtpd, so it is
not the bottleneck. A recipient is counted when the sink answers 250 to the end of DATA,
i.e. when the message is accepted. On SIGTERM/SIGINT it writes
``{"messages": M, "counts": {address: times received}}`` to --dump and exits.

The extra command ``XCOUNT`` answers ``250 <messages> <unique addresses>`` so that a bench
can read the totals at a given moment (e.g. right after killing a worker).

From another script: ``start_recording_sink(port, dump)`` and ``stop_recording_sink(p, dump)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

COUNTS: Counter[str] = Counter()
TOTAL = {"messages": 0}

EHLO = (
    b"250-recording-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    b"250 SIZE 104857600\r\n"
)


def _address(argument: bytes) -> str:
    """The address of 'TO:<a@b> PARAMS' (or 'FROM:<...>'), lowercased."""
    _, _, rest = argument.partition(b":")
    rest = rest.strip()
    if rest.startswith(b"<"):
        rest = rest[1 : rest.find(b">")]
    else:
        rest = rest.split(b" ", 1)[0]
    return rest.decode("utf-8", "replace").lower()


class SinkProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.in_data = False
        self.data_start = False  # nothing of the message read yet: "." CRLF ends it
        self.recipients: list[str] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(b"220 recording-sink ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        while self.buffer:
            if self.in_data:
                # The end of data is CRLF . CRLF; DATA's reply left us right after a CRLF.
                if self.data_start and self.buffer.startswith(b".\r\n"):
                    end, skip = 0, 3
                else:
                    end = self.buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        if len(self.buffer) >= 3:
                            self.data_start = False
                        self.buffer = self.buffer[-4:]  # keep a possible partial terminator
                        break
                    skip = 5
                self.buffer = self.buffer[end + skip :]
                self.in_data = False
                for address in self.recipients:
                    COUNTS[address] += 1
                TOTAL["messages"] += 1
                self.recipients = []
                out.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                break
            self.buffer = rest
            verb = line[:4].upper()
            if verb in (b"EHLO",):
                out.append(EHLO)
            elif verb == b"HELO":
                out.append(b"250 recording-sink\r\n")
            elif verb == b"MAIL":
                self.recipients = []
                out.append(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                self.recipients.append(_address(line[4:]))
                out.append(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                if self.recipients:
                    self.in_data = True
                    self.data_start = True
                    out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                else:
                    out.append(b"503 5.5.1 No valid recipients\r\n")
            elif verb == b"RSET":
                self.recipients = []
                out.append(b"250 2.0.0 Ok\r\n")
            elif verb == b"NOOP":
                out.append(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            elif line.upper().startswith(b"XCOUNT"):
                out.append(f"250 {TOTAL['messages']} {len(COUNTS)}\r\n".encode())
            else:
                out.append(b"502 5.5.2 Command not recognized\r\n")
        if out:
            self.transport.write(b"".join(out))


def dump(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"messages": TOTAL["messages"], "counts": COUNTS}))
    os.replace(tmp, path)


async def serve(host: str, port: int, dump_path: Path) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, host, port, backlog=512)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    dump(dump_path)


def start_recording_sink(port: int, dump_path: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, __file__, "--port", str(port), "--dump", str(dump_path)],
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None:
                sys.exit("recording sink exited at start")
            time.sleep(0.05)
    process.kill()
    sys.exit("recording sink did not start")


def sink_totals(port: int) -> tuple[int, int]:
    """(messages accepted, unique recipient addresses) right now."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"XCOUNT\r\n")
        _, messages, unique = reader.readline().split()
        sock.sendall(b"QUIT\r\n")
        return int(messages), int(unique)


def stop_recording_sink(process: subprocess.Popen, dump_path: Path) -> tuple[int, Counter[str]]:
    """Stop the sink and return (messages accepted, count per recipient address)."""
    process.terminate()
    process.wait(30)
    data = json.loads(dump_path.read_text())
    return data["messages"], Counter(data["counts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dump", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.dump))


if __name__ == "__main__":
    main()
