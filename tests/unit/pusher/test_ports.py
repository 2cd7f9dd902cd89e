"""The real adapters and the fakes satisfy the pusher's ports, signature by signature.

``services.pusher.ports`` promises that ``LinkStore``, ``BssClient``,
``ThirdPartyClient``, ``InstanceContext``… fit its ``Protocol``s unchanged, and the
unit tests rely on the fakes fitting them the same way. This walks every member of
every port and compares it with the adapter's: present, coroutine or not,
parameters (names, kinds, defaults) and annotations. The ``TYPE_CHECKING`` block says
the same to a static type checker.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import TYPE_CHECKING, Any

import pytest

from services.pusher import ports
from services.pusher.handler import PushHandler
from shared.audit.writer import AuditWriter
from shared.bss import BssClient
from shared.connector.payloads import PayloadChecker
from shared.http import ThirdPartyClient
from shared.runtime import InstanceContext, InstanceRegistry
from shared.storage.instances import Instance
from shared.storage.links import LinkStore
from tests.unit.pusher import fakes

CONFORMING = [
    (ports.Links, LinkStore), (ports.Links, fakes.FakeLinkStore),
    (ports.BssRecords, BssClient), (ports.BssRecords, fakes.FakeBss),
    (ports.ThirdParty, ThirdPartyClient), (ports.ThirdParty, fakes.FakeThirdParty),
    (ports.RequestChecker, PayloadChecker),
    (ports.InstanceView, Instance),
    (ports.PushTarget, InstanceContext), (ports.PushTarget, fakes.FakeTarget),
    (ports.Instances, InstanceRegistry), (ports.Instances, fakes.FakeInstances),
    (ports.AuditLog, AuditWriter), (ports.AuditLog, fakes.FakeAudit),
    (ports.ParentPusher, PushHandler),
    (ports.Clock, ports.SystemClock), (ports.Clock, fakes.FakeClock),
]

#: Annotations that differ by design: an adapter returns its own kind of target.
NARROWER = {"InstanceContext": "PushTarget", "FakeTarget": "PushTarget"}

if TYPE_CHECKING:
    def _links(store: LinkStore, fake: fakes.FakeLinkStore) -> list[ports.Links]:
        return [store, fake]

    def _bss(client: BssClient, fake: fakes.FakeBss) -> list[ports.BssRecords]:
        return [client, fake]

    def _third_party(client: ThirdPartyClient,
                     fake: fakes.FakeThirdParty) -> list[ports.ThirdParty]:
        return [client, fake]

    def _target(context: InstanceContext, fake: fakes.FakeTarget) -> list[ports.PushTarget]:
        return [context, fake]

    def _instances(registry: InstanceRegistry,
                   fake: fakes.FakeInstances) -> list[ports.Instances]:
        return [registry, fake]

    def _audit(writer: AuditWriter, fake: fakes.FakeAudit) -> list[ports.AuditLog]:
        return [writer, fake]

    def _parents(handler: PushHandler) -> ports.ParentPusher:
        return handler


def members(port: type) -> dict[str, Any]:
    """The methods and properties a port declares."""
    return {name: value for name, value in vars(port).items()
            if not name.startswith("_") and (inspect.isfunction(value)
                                             or isinstance(value, property))}


def has_attribute(cls: type, name: str) -> bool:
    """Whether instances of ``cls`` have ``name``: on the class, a dataclass field, or
    assigned as ``self.name = …`` in ``__init__``."""
    if hasattr(cls, name):
        return True
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return True
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))  # type: ignore[misc]
    return any(isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
               and isinstance(node.value, ast.Name) and node.value.id == "self"
               and node.attr == name for node in ast.walk(tree))


def annotation(value: Any) -> str:
    text = value if isinstance(value, str) else getattr(value, "__name__", str(value))
    for narrow, wide in NARROWER.items():
        text = text.replace(narrow, wide)
    return text


def mismatches(port: type, adapter: type) -> list[str]:
    found = []
    for name, declared in members(port).items():
        if isinstance(declared, property):
            if not has_attribute(adapter, name):
                found.append(f"{name}: missing")
            continue
        actual = getattr(adapter, name, None)
        if not inspect.isfunction(actual):
            found.append(f"{name}: not a method")
            continue
        if inspect.iscoroutinefunction(declared) != inspect.iscoroutinefunction(actual):
            found.append(f"{name}: async in one, not in the other")
        found += [f"{name}: {problem}" for problem in _signature_mismatches(declared, actual)]
    return found


def _signature_mismatches(declared: Any, actual: Any) -> list[str]:
    want = list(inspect.signature(declared).parameters.values())[1:]
    have = {p.name: p for p in list(inspect.signature(actual).parameters.values())[1:]}
    positional = [p.name for p in have.values()
                  if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    problems = []
    for index, param in enumerate(want):
        got = have.get(param.name)
        if got is None:
            problems.append(f"no parameter {param.name}")
            continue
        if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and (
                index >= len(positional) or positional[index] != param.name):
            problems.append(f"{param.name} is not positional parameter {index + 1}")
        if param.default is not inspect.Parameter.empty and got.default is inspect.Parameter.empty:
            problems.append(f"{param.name} has no default")
        if annotation(param.annotation) != annotation(got.annotation):
            problems.append(f"{param.name}: {got.annotation} instead of {param.annotation}")
    for extra in set(have) - {p.name for p in want}:
        if have[extra].default is inspect.Parameter.empty and have[extra].kind not in (
                inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            problems.append(f"extra parameter {extra} without a default")
    returns = (inspect.signature(declared).return_annotation,
               inspect.signature(actual).return_annotation)
    if annotation(returns[0]) != annotation(returns[1]):
        problems.append(f"returns {returns[1]} instead of {returns[0]}")
    return problems


@pytest.mark.parametrize(("port", "adapter"), CONFORMING,
                         ids=[f"{a.__name__}-{p.__name__}" for p, a in CONFORMING])
def test_the_adapter_fits_the_port(port, adapter):
    assert mismatches(port, adapter) == []


def test_the_check_notices_an_adapter_that_does_not_fit():
    class Drifted:
        base_url = "http://x"

        async def get(self, org_id: str, record_id: str) -> dict[str, Any] | None:
            return None

        def aclose(self) -> None:
            pass

    assert mismatches(ports.BssRecords, Drifted) == [
        "get: no parameter entity",
        "get: record_id is not positional parameter 3",
        "aclose: async in one, not in the other",
    ]
    assert mismatches(ports.ThirdParty, Drifted) == ["send: not a method"]
