"""Put on PYTHONPATH of a process under test: names ending in `.rebind.test` are resolved by the
test's name server (`tests.servers.NameServer`, at INKQ_TEST_RESOLVER=host:port), every other name
by the system, as before.

This stands in for pointing a machine's resolv.conf at a test DNS server, which a test cannot do for
one process. The answers live in the test process, so they change from one lookup to the next across
every process that asks (the worker, each work-horse it forks), as a rebinding DNS server's do.
Whatever resolves names in that process (inkq's code, requests, urllib3) goes through
`socket.getaddrinfo`, so the server sees every lookup.
"""
import os
import socket

_system_getaddrinfo = socket.getaddrinfo
_SUFFIX = ".rebind.test"


def _getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    name = host.decode() if isinstance(host, bytes) else host
    if not isinstance(name, str) or not name.rstrip(".").endswith(_SUFFIX):
        return _system_getaddrinfo(host, port, family, type, proto, flags)
    server_host, server_port = os.environ["INKQ_TEST_RESOLVER"].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(name.encode(), (server_host, int(server_port)))
        address = sock.recv(512).decode()
    return _system_getaddrinfo(address, port, family, type, proto, flags | socket.AI_NUMERICHOST)


socket.getaddrinfo = _getaddrinfo
