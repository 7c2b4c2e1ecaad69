"""Imported first by the test children: any connection or name lookup beyond loopback fails.

An audit hook (PEP 578) sees every ``socket.connect`` and ``socket.getaddrinfo``; for an
address other than 127.0.0.0/8, ::1 or localhost it prints ``NETGUARD blocked ...`` to
stderr and raises, so the exporters cannot reach statsbeat, 169.254.169.254 or any other
outside host, and the test sees that they tried.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

# The machine's own name resolves from /etc/hosts; amldbg looks it up for the node address.
# 0.0.0.0 is not allowed: tests connect to loopback addresses only.
_LOCAL = ("127.", "::1", "localhost", socket.gethostname())


def _is_local(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return str(host).startswith(_LOCAL)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address and not _is_local(address[0]):
            sys.stderr.write(f"NETGUARD blocked connect to {address!r}\n")
            raise OSError(f"netguard: connection to {address!r} blocked")
    elif event == "socket.getaddrinfo" and not _is_local(args[0]):
        sys.stderr.write(f"NETGUARD blocked lookup of {args[0]!r}\n")
        raise OSError(f"netguard: lookup of {args[0]!r} blocked")


sys.addaudithook(_hook)
