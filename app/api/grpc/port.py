"""Whether the gRPC port can be bound, asked by `bertserve serve` before any worker starts, so that a port another
process holds ends the command with one line, as an occupied HTTP port does (uvicorn's), and not with gRPC's
traceback from inside a worker's start-up. Sockets only: importing this loads neither gRPC nor the service.

The probe binds as the gRPC server will (app.api.grpc.server): SO_REUSEADDR as gRPC core always sets it, and
SO_REUSEPORT with several workers, which share the port. Another process can still take the port between the
probe and the server's bind: the server then fails its start, with the same words in its error."""

from __future__ import annotations

import socket
import sys
from typing import Any


def bind_refusal(host: str, port: int, reuse_port: bool) -> str | None:
    """None when `host:port` can be bound now; else why not, in a few words ("address already in use")."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror}"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return (exc.strerror or str(exc)).lower()
    return None


def address(settings: Any) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{host}:{settings.grpc_port}"


def refusal_line(settings: Any, why: str) -> str:
    return (f"bertserve: cannot serve gRPC on {address(settings)} (BERTSERVE_GRPC_PORT): {why}; stop what holds "
            "it, choose another port, or set BERTSERVE_GRPC_PORT=0 to serve HTTP only")


def exit_if_unbindable(settings: Any) -> None:
    """`bertserve serve`, before uvicorn starts: one line on standard error and exit status 2 when the gRPC port
    (if served) cannot be bound."""
    if not settings.grpc_port:
        return
    why = bind_refusal(settings.host, settings.grpc_port, reuse_port=settings.workers > 1)
    if why:
        print(refusal_line(settings, why), file=sys.stderr)
        raise SystemExit(2)
