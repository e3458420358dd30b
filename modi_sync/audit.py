"""Who did something, as the audit log records it (docs/gdpr.md, "The audit log").

Every entry names the request (or command run) that made it and, for a request, the
client's address as ``MODI_AUDIT_IP`` says: truncated (an IPv4 /24, an IPv6 /48) by
default, in full, or not at all.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from storage.audit import AuditEntry


@dataclass(frozen=True, slots=True)
class Actor:
    request_id: str
    ip: str | None  # already as it is to be stored

    @classmethod
    def command(cls, name: str) -> Actor:
        """An operator's command: no address, a run id of its own."""
        return cls(f"{name}-{uuid.uuid4()}", None)

    def entry(self, action: str, resource_type: str, *, user_id: UUID | None,
              resource_id: str | None = None, email: str | None = None,
              details: dict[str, Any] | None = None) -> AuditEntry:
        return AuditEntry(self.request_id, action, resource_type, user_id, resource_id,
                          email, self.ip, details)


def stored_ip(address: str, mode: str) -> str | None:
    """``address`` as ``MODI_AUDIT_IP`` keeps it; None for "off" or no address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None  # a unix socket ("unknown"): nothing to keep
    if mode == "off":
        return None
    if mode == "full":
        return str(ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if isinstance(ip, ipaddress.IPv4Address) else 48
    return str(ipaddress.ip_network((ip, prefix), strict=False).network_address)
