"""Form bodies encoded per OpenAPI 3 ``encoding`` / ``style`` / ``explode``, byte for byte;
what a form cannot carry is refused with its pointer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared.connector import check_connector
from shared.connector.form_body import MULTIPART, URLENCODED, encode_form, form_media
from shared.errors import SchemaViolation

DEEP = {"style": "deepObject", "explode": True}


def form(body: dict, **encoding: dict) -> str:
    return encode_form(URLENCODED, body, encoding).content.decode()


def refused(body: object, **encoding: dict) -> str:
    with pytest.raises(SchemaViolation) as caught:
        encode_form(URLENCODED, body, encoding)
    return str(caught.value)


def test_scalars_booleans_numbers_and_nulls():
    body = {"name": "Café & Co", "active": True, "closed": False, "count": 3, "rate": 2.0,
            "ratio": 0.25, "gone": None, "empty": ""}
    assert form(body) == (
        "name=Caf%C3%A9+%26+Co&active=true&closed=false&count=3&rate=2&ratio=0.25&empty="
    )


def test_default_form_explode_repeats_a_list_and_spreads_an_object():
    assert form({"tags": ["a", "b c"], "address": {"city": "Paris", "zip": None}}) == (
        "tags=a&tags=b+c&city=Paris"
    )


def test_form_without_explode_joins_with_commas():
    plain = {"style": "form", "explode": False}
    assert form({"tags": ["a,1", "b"], "color": {"R": 100, "G": 200}},
                tags=plain, color=plain) == "tags=a%2C1,b&color=R,100,G,200"


@pytest.mark.parametrize(("style", "joined"),
                         [("spaceDelimited", "a%20b"), ("pipeDelimited", "a|b")])
def test_space_and_pipe_delimited_lists(style, joined):
    assert form({"tags": ["a", "b"]}, tags={"style": style, "explode": False}) == (
        f"tags={joined}"
    )


def test_deep_object_nests_to_any_depth_and_indexes_lists():
    body = {
        "billing_address": {"city": "Paris", "line2": None, "geo": {"lat": 48.8}},
        "charges": [{"amount": 500, "currency": "EUR"}, {"amount": 1}],
        "expand": ["customer"],
        "metadata": "",  # a vendor's "clear it": a scalar under deepObject is name=value
    }
    assert form(body, billing_address=DEEP, charges=DEEP, expand=DEEP, metadata=DEEP) == (
        "billing_address[city]=Paris&billing_address[geo][lat]=48.8"
        "&charges[0][amount]=500&charges[0][currency]=EUR&charges[1][amount]=1"
        "&expand[0]=customer&metadata="
    )


def test_brackets_inside_names_are_data_not_structure():
    assert form({"a[b]": {"c]": 1}}, **{"a[b]": DEEP}) == "a%5Bb%5D[c%5D]=1"


def test_empty_lists_and_objects_send_nothing():
    assert form({"tags": [], "meta": {}, "name": "x"}, meta=DEEP) == "name=x"


@pytest.mark.parametrize(
    ("body", "encoding", "where", "words"),
    [
        ({"charges": [{"amount": 1}]}, {}, "/charges/0", "declare style deepObject for 'charges'"),
        ({"address": {"geo": {"lat": 1}}}, {}, "/address/geo", "inside an object"),
        ({"tags": ["a", None]}, {}, "/tags/1", "a null in a list"),
        ({"tags": [["a"]]}, {}, "/tags/0", "a list in a list"),
        ({"charges": [None]}, {"charges": DEEP}, "/charges/0", "a null in a list"),
        ({"color": {"R": 1}}, {"color": {"style": "pipeDelimited"}}, "/color",
         "does not apply to an object"),
        (["a"], {}, "/", "must be an object"),
    ],
)
def test_what_a_form_cannot_carry_is_refused_where_it_is(body, encoding, where, words):
    message = refused(body, **encoding)
    assert message.startswith(f"the body cannot be sent as {URLENCODED}: at {where}: ")
    assert words in message


def test_multipart_parts_and_a_boundary_from_the_content():
    body = {"purpose": "invoice", "details": {"n": 1}, "tags": ["a"], "skip": None}
    encoded = encode_form(MULTIPART, body, {"file": {"contentType": "image/png"}})
    boundary = encoded.content_type.split("boundary=")[1]
    assert encoded.content_type == f"{MULTIPART}; boundary={boundary}"
    assert encoded.content.decode() == (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="purpose"\r\n\r\ninvoice\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="details"\r\n'
        'Content-Type: application/json\r\n\r\n{"n":1}\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="tags"\r\n\r\na\r\n'
        f"--{boundary}--\r\n"
    )
    assert encode_form(MULTIPART, body, {}).content == encoded.content
    other = encode_form(MULTIPART, {**body, "purpose": "receipt"}, {})
    assert other.content_type != encoded.content_type


def test_a_multipart_object_declared_as_text_is_refused():
    with pytest.raises(SchemaViolation, match="at /details: an object cannot be sent"):
        encode_form(MULTIPART, {"details": {"n": 1}}, {"details": {"contentType": "text/plain"}})


def test_form_media_types_are_recognised_with_parameters():
    assert form_media("application/x-www-form-urlencoded; charset=utf-8") == URLENCODED
    assert form_media("Multipart/Form-Data") == MULTIPART
    assert form_media("application/json") is None and form_media(None) is None


def test_validate_warns_at_a_mapped_field_the_form_cannot_carry(tmp_path):
    billing = Path(__file__).resolve().parents[2] / "tests" / "data" / "vendor" / "billing.yaml"
    document, problems = check_connector(billing)
    assert document is not None
    [warning] = [p for p in problems if p.severity == "warning"]
    assert warning.pointer == "/x-synchronization/transforms/AccountToCustomer/map/charges"
    assert warning.message.startswith(
        "POST /customers/{id} sends its body as application/x-www-form-urlencoded, where a "
        "list of objects has no encoding in style 'form': declare style deepObject for "
        "'charges'")

    spec = yaml.safe_load(billing.read_text())
    update = spec["paths"]["/customers/{id}"]["post"]["requestBody"]["content"]
    update["application/x-www-form-urlencoded"]["encoding"]["charges"] = DEEP
    fixed = tmp_path / "billing.yaml"
    fixed.write_text(yaml.safe_dump(spec, sort_keys=False))
    document, problems = check_connector(fixed)
    assert document is not None and problems == []
