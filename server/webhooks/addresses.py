"""Which receiver addresses a webhook may go to (`--webhook-deny-private`).

The check runs when an endpoint is created or changed (a clear 422) and again on every
send, on the addresses the name resolves to then (the resolver below, which the sending
session uses): a name that pointed outside at create time and inside later is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from server.constants import WEBHOOK_CREATE_RESOLVE_SECONDS


class PrivateAddress(OSError):
    """The receiver's address is loopback, private, link-local or otherwise not public."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def literal_address(host: str) -> str | None:
    """`host` if it is an IP address (aiohttp connects to those without resolving)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host.strip("[]")))
    return None


def refuse_if_private(host: str, addresses: list[str]) -> None:
    for address in addresses:
        if not is_public(address):
            raise PrivateAddress(f"{host} is {address}, not a public address")


async def check_at_create(host: str) -> str | None:
    """Why `host` is refused under --webhook-deny-private, or None. A name that does not
    resolve now is accepted: the check is repeated on every send."""
    literal = literal_address(host)
    try:
        if literal is not None:
            refuse_if_private(host, [literal])
            return None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WEBHOOK_CREATE_RESOLVE_SECONDS):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        refuse_if_private(host, [str(info[4][0]) for info in infos])
    except PrivateAddress as exc:
        return str(exc)
    except (OSError, TimeoutError):
        return None
    return None


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name if any address it resolves to is not public."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        refuse_if_private(host, [result["host"] for result in results])
        return results

    async def close(self) -> None:
        await self._inner.close()
