"""Reaching the document store at start: wait while it is down, stop at a refused login.

A service started before its store (or while the store restarts) waits, saying every
``log_every`` seconds which address it is waiting for. A login the store refuses is no
reason to wait: it raises :class:`StoreLoginError`, which names the user and the address
and never the password. Nothing here prints the connection string itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import pymongo
from pymongo import AsyncMongoClient, uri_parser
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    InvalidURI,
    OperationFailure,
    PyMongoError,
)

from flowyard.errors import InfrastructureError

log = logging.getLogger(__name__)

# MongoDB's AuthenticationFailed, and DocumentDB's answer to a wrong SCRAM proof
# ("Invalid key", Unauthorized): to a ping, which needs no privilege, both mean the login.
_LOGIN_REFUSED = {18, 13}


class StoreLoginError(InfrastructureError):
    """The document store refused the user and password of ``FLOWYARD_MONGO_URL``."""


@dataclass(frozen=True)
class StoreAddress:
    """Where the store is and who logs in, as safe to print (no password)."""

    hosts: str
    user: str

    def __str__(self) -> str:
        who = f"user '{self.user}' at " if self.user else ""
        return f"{who}{self.hosts}"


def store_address(url: str) -> StoreAddress:
    """The hosts and user of a ``mongodb://`` URL; raises InfrastructureError for a URL
    that is not one (without repeating it: it may hold a password)."""
    try:
        parsed = uri_parser.parse_uri(url, validate=False, warn=True)
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        raise InfrastructureError(f"FLOWYARD_MONGO_URL is not a MongoDB URL: {exc}") from None
    hosts = ",".join(f"{host}:{port}" for host, port in parsed["nodelist"])
    return StoreAddress(hosts or "?", parsed.get("username") or "")


async def wait_for_store(
    client: AsyncMongoClient[Any],
    address: StoreAddress,
    *,
    wait_seconds: float = math.inf,
    log_every: float = 10.0,
) -> None:
    """Return once the store answers a ping with our login; wait (logging) while it does
    not answer, up to ``wait_seconds``; raise :class:`StoreLoginError` when it refuses the
    login and :class:`InfrastructureError` when the wait runs out."""
    started = time.monotonic()
    next_log = started
    while True:
        remaining = wait_seconds - (time.monotonic() - started)
        try:
            # one bounded try (server selection included), so the log line comes on time
            with pymongo.timeout(max(min(5.0, remaining), 0.5)):
                await client.admin.command("ping")
            if time.monotonic() > started + 1:
                log.info("the document store at %s answers", address.hosts)
            return
        except OperationFailure as exc:
            if exc.code in _LOGIN_REFUSED:
                raise StoreLoginError(
                    f"the document store at {address.hosts} refused the login of user "
                    f"'{address.user or '(none)'}': {exc.details and exc.details.get('errmsg')}"
                    " (check the user and password in FLOWYARD_MONGO_URL)"
                ) from None
            reason = str(exc.details.get("errmsg") if exc.details else exc)
        except (ConnectionFailure, PyMongoError) as exc:  # incl. the try's time-out
            reason = _first_line(str(exc))
        now = time.monotonic()
        if now >= next_log:
            log.warning(
                "waiting for the document store at %s (%s): %s",
                address.hosts,
                f"user {address.user}" if address.user else "no login",
                reason,
            )
            next_log = now + log_every
        if now - started >= wait_seconds:
            raise InfrastructureError(
                f"the document store at {address.hosts} did not answer within "
                f"{wait_seconds:.0f} s: {reason}"
            )
        await asyncio.sleep(1.0)


def _first_line(text: str) -> str:
    return text.split(", Timeout:")[0].splitlines()[0][:300]
