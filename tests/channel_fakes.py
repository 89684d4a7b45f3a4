"""Real receivers on loopback for the tests: an SMTP server (aiosmtpd) and an HTTP receiver."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SmtpSink:
    """Collects every message an aiosmtpd server on loopback receives."""

    messages: list[email.message.Message] = field(default_factory=list)
    refuse: bool = False
    hold_first: bool = False  # keep the first message's answer back until `release` is set
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        if self.refuse:
            return "451 try again later"
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(parsed)
        self.arrived.set()
        while self.hold_first and len(self.messages) == 1 and not self.release.is_set():
            await asyncio.sleep(0.05)
        return "250 OK"


class SmtpServer:
    def __init__(self) -> None:
        self.sink = SmtpSink()
        self.port = free_port()
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.sink.release.set()
        self.controller.stop()

    @property
    def messages(self) -> list[email.message.Message]:
        return self.sink.messages


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """An HTTP server on loopback answering each POST with the next status of `script`
    (then 200), optionally with headers, and recording what it got."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.pause = threading.Event()
        self.hold_first = False
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                receiver.received.append(Received(self.path, dict(self.headers), body))
                receiver.arrived.set()
                if receiver.hold_first and len(receiver.received) == 1:
                    receiver.pause.wait(30)
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> HttpReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.pause.set()
        self.server.shutdown()
        self.server.server_close()
