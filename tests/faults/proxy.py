"""A TCP proxy a test can cut: forwards 127.0.0.1:<port> to a backend (here Postgres);
``cut()`` drops every connection and stops listening, ``restore()`` listens again on the
same port. Clients pointed at the proxy see the database vanish and come back."""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    def __init__(self, backend: tuple[str, int]) -> None:
        self.backend = backend
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def restore(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        with self._lock:
            self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
            if self._listener is not None:
                socks.append(self._listener)
                self._listener = None
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.backend)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not lst:  # cut while this connection was being made
                    client.close()
                    upstream.close()
                    continue
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
