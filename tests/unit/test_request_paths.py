"""Values in paths on the wire (``shared.uri``, ``fill_path``, the BSS client): RFC 3986
segment data, and never a dot segment made of a value."""

from __future__ import annotations

import pytest

from shared.bss import BssClient
from shared.connector.request import fill_path
from shared.uri import path_segment


@pytest.mark.parametrize(("value", "path"), [
    ("..", "/things/%2E%2E"),
    (".", "/things/%2E"),
    ("...", "/things/..."),  # not a dot segment: sent as it is
    (".hidden", "/things/.hidden"),
    ("a/../b", "/things/a%2F..%2Fb"),  # one segment: "/" is encoded
    ("%2E%2E", "/things/%252E%252E"),  # a percent sign is data too
    ("x?y#z", "/things/x%3Fy%23z"),
    ("café id", "/things/caf%C3%A9%20id"),
    ("A-z_0.9~", "/things/A-z_0.9~"),  # unreserved characters stay
])
def test_a_value_is_one_segment_of_data(value: str, path: str) -> None:
    assert fill_path("/things/{code}", {"code": value}) == path


def test_a_dot_segment_made_of_several_values_is_encoded_too() -> None:
    assert fill_path("/t/{a}{b}/x", {"a": ".", "b": "."}) == "/t/%2E%2E/x"
    assert fill_path("/t/{a}.json", {"a": "."}) == "/t/..json"  # not a dot segment


def test_dot_segments_of_the_template_itself_are_the_connector_authors() -> None:
    assert fill_path("/v1/./things/{id}", {"id": "7"}) == "/v1/./things/7"
    assert fill_path("/things/{id}", {}) == "/things/{id}"  # no value: left as written


def test_the_bss_clients_paths_are_built_the_same_way() -> None:
    assert BssClient._path("org", "account", "..") == "/organizations/org/account/%2E%2E"
    assert BssClient._path(".", "account") == "/organizations/%2E/account"
    assert BssClient._path("o", "account", "a/b") == "/organizations/o/account/a%2Fb"
    assert path_segment("x.y") == "x.y"
