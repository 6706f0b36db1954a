"""Every gRPC method in the flowyard.v1 contracts has a role in the gateway's table.

The gateway refuses a method missing from ``roles.METHOD_ROLES`` to everyone; this test
makes the omission fail here first, naming the methods. Services are found by importing
every ``*_pb2`` module of flowyard.v1, so a new .proto file is covered by itself.
"""

from __future__ import annotations

import importlib
import pkgutil

import flowyard.v1
from flowyard_api_gateway.roles import METHOD_ROLES


def contract_methods() -> set[str]:
    found: set[str] = set()
    for info in pkgutil.iter_modules(flowyard.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"flowyard.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                found |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return found


def test_every_contract_method_has_a_role() -> None:
    missing = sorted(contract_methods() - METHOD_ROLES.keys())
    assert not missing, f"add these to roles.METHOD_ROLES with the least role they need: {missing}"


def test_the_role_table_names_only_methods_that_exist() -> None:
    stale = sorted(METHOD_ROLES.keys() - contract_methods())
    assert not stale, f"roles.METHOD_ROLES names methods no contract defines: {stale}"


def test_the_token_service_is_for_admins_except_whoami() -> None:
    tokens = {p: r.label for p, r in METHOD_ROLES.items() if "/flowyard.v1.TokenService/" in p}
    assert tokens == {
        "/flowyard.v1.TokenService/IssueToken": "admin",
        "/flowyard.v1.TokenService/RevokeToken": "admin",
        "/flowyard.v1.TokenService/ListTokens": "admin",
        "/flowyard.v1.TokenService/WhoAmI": "viewer",
    }
