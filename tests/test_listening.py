"""The server's sockets: bound before start-up, handed over only once a client spoke."""

from __future__ import annotations

import socket

import pytest

from modi_sync.listening import bound_sockets

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_DEFER_ACCEPT"),
                                reason="TCP_DEFER_ACCEPT is Linux's")


def test_a_connection_is_refused_until_listening_and_accepted_once_it_sends():
    (server,) = bound_sockets("127.0.0.1", 0)
    with server:
        address = server.getsockname()
        with pytest.raises(ConnectionRefusedError):  # start-up: not listening yet
            socket.create_connection(address, timeout=2).close()

        server.listen(8)
        server.settimeout(0.2)
        with socket.create_connection(address, timeout=2) as silent:
            with pytest.raises(TimeoutError):  # connected, but nothing sent: not handed over
                server.accept()
            silent.sendall(b"GET /health HTTP/1.1\r\n\r\n")
            server.settimeout(2)
            accepted, _ = server.accept()
            with accepted:
                assert accepted.recv(64).startswith(b"GET /health")


def test_each_address_of_a_name_gets_its_own_socket():
    names = {a[4][0] for a in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    sockets = bound_sockets("localhost", 0)
    try:
        assert {s.getsockname()[0] for s in sockets} == names
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
                   for s in sockets)
    finally:
        for s in sockets:
            s.close()


def test_an_empty_host_is_every_interface():
    sockets = bound_sockets("", 0)
    try:
        assert "0.0.0.0" in {s.getsockname()[0] for s in sockets}
    finally:
        for s in sockets:
            s.close()
