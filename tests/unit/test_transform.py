"""The transformation engine: field maps, JSONata helpers, nulls, templates, static analysis.

Pure code: every test builds a transform (or template) and looks at the payload it
produces, or at the error a record gets.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared.errors import DependencyPending, MappingError, TransientError
from shared.transform import (
    UNDEFINED,
    Expression,
    ExpressionSyntaxError,
    LinksNotLoaded,
    LookupTable,
    PreloadedLinks,
    TemplateSyntaxError,
    TransformContext,
    build_transform,
    compile_expression,
    compile_template,
)
from shared.transform.context import EMPTY_CONTEXT, current_context, using_context
from shared.transform.expressions import bound_names, builtin_function_names, function_calls
from shared.transform.helpers import HelperError

MISSING = object()  # the field is not in the payload


def apply(
    spec: dict[str, Any], record: Any, context: TransformContext | None = None, name: str = "T"
) -> dict[str, Any]:
    return build_transform(name, spec).apply(record, context or TransformContext())


def field(
    expression: str, record: Any, context: TransformContext | None = None, keep_nulls: bool = False
) -> Any:
    """The value one map rule puts in the payload, or ``MISSING``."""
    payload = apply({"map": {"f": expression}, "keepNulls": keep_nulls}, record, context)
    return payload.get("f", MISSING)


def lookups(**specs: dict[str, Any]) -> TransformContext:
    return TransformContext(
        lookups={name: LookupTable.from_spec(name, spec) for name, spec in specs.items()}
    )


# -- field maps ------------------------------------------------------------------------


def test_dotted_targets_build_nested_objects():
    spec = {
        "map": {
            "name": "name",
            "billing.address.city": "city",
            "billing.address.zip": "zip",
            "billing.vat": "vat",
        }
    }
    record = {"name": "Acme", "city": "Lyon", "zip": "69001", "vat": "FR1"}

    assert apply(spec, record) == {
        "name": "Acme",
        "billing": {"address": {"city": "Lyon", "zip": "69001"}, "vat": "FR1"},
    }


def test_nested_target_whose_fields_are_all_missing_is_left_out():
    spec = {"map": {"name": "name", "billing.city": "city", "billing.zip": "zip"}}

    assert apply(spec, {"name": "Acme"}) == {"name": "Acme"}


def test_non_string_sources_are_constants():
    spec = {"map": {"count": 3, "active": True, "ratio": 0.5, "tags": ["a"], "none": None}}

    assert apply(spec, {}) == {"count": 3, "active": True, "ratio": 0.5, "tags": ["a"]}
    assert apply({**spec, "keepNulls": True}, {})["none"] is None


def test_a_later_nested_rule_extends_an_object_copied_from_the_record_without_touching_it():
    spec = {"map": {"billing": "address", "billing.country": "'FR'"}}
    record = {"address": {"city": "Lyon"}}
    before = copy.deepcopy(record)

    payload = apply(spec, record)

    assert payload == {"billing": {"city": "Lyon", "country": "FR"}}
    assert record == before


def test_one_compiled_transform_serves_many_records():
    transform = build_transform("T", {"map": {"out.n": "n"}})
    context = TransformContext()

    first = transform.apply({"n": 1}, context)
    second = transform.apply({"n": 2}, context)

    assert (first, second) == ({"out": {"n": 1}}, {"out": {"n": 2}})


# -- arrays: invoice lines ------------------------------------------------------------

LINE_MAP = "lines.{'sku': sku, 'quantity': qty, 'total': qty * unitPrice}[]"


def test_lines_stay_an_array_with_a_single_line():
    record = {"lines": [{"sku": "A", "qty": 2, "unitPrice": 1.5}]}

    assert field(LINE_MAP, record) == [{"sku": "A", "quantity": 2, "total": 3}]


def test_without_the_array_constructor_a_single_line_collapses_to_an_object():
    """Why ``[]`` matters: JSONata unwraps singleton sequences."""
    record = {"lines": [{"sku": "A", "qty": 2, "unitPrice": 1.5}]}

    assert field("lines.{'sku': sku}", record) == {"sku": "A"}


def test_line_totals_and_invoice_total_are_computed():
    record = {
        "lines": [
            {"sku": "A", "qty": 2, "unitPrice": 1.25},
            {"sku": "B", "qty": 3, "unitPrice": 10},
            {"sku": "C", "qty": 1, "unitPrice": 0.1},
        ]
    }
    spec = {
        "map": {
            "lines": LINE_MAP,
            "total": "$round($sum(lines.(qty * unitPrice)), 2)",
            "count": "$count(lines)",
        }
    }

    payload = apply(spec, record)

    assert [line["total"] for line in payload["lines"]] == [2.5, 30, 0.1]
    assert [line["sku"] for line in payload["lines"]] == ["A", "B", "C"]
    assert payload["total"] == 32.6
    assert payload["count"] == 3


@pytest.mark.parametrize("record", [{"lines": []}, {}], ids=["no lines", "missing"])
def test_no_lines_leaves_the_field_out(record):
    assert field(LINE_MAP, record) is MISSING


def test_lines_can_use_lookups_per_line():
    context = lookups(unit={"pcs": "EA", "h": "HUR"})
    record = {"lines": [{"unit": "pcs"}, {"unit": "h"}]}

    assert field("lines.{'unit': $lookup('unit', unit)}[]", record, context) == [
        {"unit": "EA"},
        {"unit": "HUR"},
    ]


# -- filters ---------------------------------------------------------------------------

BILLING_CITY = "addresses[isBilling][0].city"


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        (
            [
                {"city": "Paris", "isBilling": False},
                {"city": "Lyon", "isBilling": True},
                {"city": "Nice", "isBilling": True},
            ],
            "Lyon",
        ),
        ([{"city": "Paris", "isBilling": False}], MISSING),
        ([{"city": "Paris"}], MISSING),
        ([], MISSING),
        ({"city": "Lyon", "isBilling": True}, "Lyon"),  # a lone object acts as a 1-item array
    ],
    ids=["first billing", "no billing", "flag absent", "empty", "single object"],
)
def test_filter_picks_the_first_billing_address(addresses, expected):
    assert field(BILLING_CITY, {"addresses": addresses}) == expected


def test_missing_array_under_a_filter_leaves_the_field_out():
    assert field(BILLING_CITY, {}) is MISSING


# -- lookups ---------------------------------------------------------------------------

INDUSTRY = {"Software": "COMPUTER_SOFTWARE", "Retail": "RETAIL"}


def test_lookup_maps_a_value():
    assert (
        field("$lookup('industry', industry)", {"industry": "Software"}, lookups(industry=INDUSTRY))
        == "COMPUTER_SOFTWARE"
    )


def test_lookup_miss_is_a_mapping_error_naming_transform_and_field():
    transform = build_transform(
        "AccountToCompany", {"map": {"sector": "$lookup('industry', industry)"}}
    )

    with pytest.raises(MappingError) as caught:
        transform.apply({"industry": "Mining"}, lookups(industry=INDUSTRY))

    assert caught.value.details == {"transform": "AccountToCompany", "field": "sector"}
    assert "AccountToCompany" in str(caught.value)
    assert "sector" in str(caught.value)
    assert "'Mining'" in str(caught.value)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("$lookup('industry', industry, 'OTHER')", "OTHER"),
        ("$lookup('industry', industry, 0)", 0),
        ("$lookup('industry', industry, industry)", "Mining"),
        ("$lookup('industry', industry, null)", MISSING),
    ],
)
def test_lookup_miss_gives_the_fallback(expression, expected):
    assert field(expression, {"industry": "Mining"}, lookups(industry=INDUSTRY)) == expected


def test_lookup_table_default_applies_to_unlisted_values():
    context = lookups(tier={"values": {"1": "GOLD"}, "default": "BRONZE"})

    assert field("$lookup('tier', tier)", {"tier": "1"}, context) == "GOLD"
    assert field("$lookup('tier', tier)", {"tier": "9"}, context) == "BRONZE"
    assert field("$lookup('tier', tier, 'FALLBACK')", {"tier": "9"}, context) == "FALLBACK"


def test_from_spec_reads_plain_mappings_and_values_with_default():
    plain = LookupTable.from_spec("industry", INDUSTRY)
    with_default = LookupTable.from_spec("tier", {"values": {"1": "GOLD"}, "default": None})

    assert (plain.values, plain.has_default) == (INDUSTRY, False)
    assert (with_default.values, with_default.has_default, with_default.default) == (
        {"1": "GOLD"},
        True,
        None,
    )


def test_instance_entries_override_and_extend_the_connectors_table():
    connector = LookupTable.from_spec("industry", INDUSTRY)
    instance = connector.overlaid({"Software": "SAAS", "Mining": "MINING"})
    context = TransformContext(lookups={"industry": instance})
    expression = "$lookup('industry', industry)"

    assert field(expression, {"industry": "Software"}, context) == "SAAS"
    assert field(expression, {"industry": "Mining"}, context) == "MINING"
    assert field(expression, {"industry": "Retail"}, context) == "RETAIL"
    assert connector.values == INDUSTRY


def test_overlay_keeps_the_table_default():
    table = LookupTable.from_spec("tier", {"values": {"1": "GOLD"}, "default": "BRONZE"})

    overlaid = table.overlaid({"2": "SILVER"})

    assert (overlaid.default, dict(overlaid.values)) == ("BRONZE", {"1": "GOLD", "2": "SILVER"})


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"code": 1}, "ONE"),
        ({"code": 1.0}, "ONE"),
        ({"code": "1"}, "ONE"),
        ({"code": 2.5}, "TWO AND A HALF"),
        ({"code": True}, "YES"),
        ({"code": False}, "NO"),
    ],
    ids=["int", "integral float", "string", "float", "true", "false"],
)
def test_lookup_keys_of_numbers_and_booleans_match_their_json_text(record, expected):
    context = lookups(codes={"1": "ONE", "2.5": "TWO AND A HALF", "true": "YES", "false": "NO"})

    assert field("$lookup('codes', code)", record, context) == expected


def test_lookup_of_a_computed_number_uses_its_integral_text():
    context = lookups(codes={"2": "TWO"})

    assert field("$lookup('codes', code + 1)", {"code": 1}, context) == "TWO"


@pytest.mark.parametrize("record", [{"industry": None}, {}], ids=["null", "missing"])
def test_lookup_of_nothing_gives_nothing(record):
    context = lookups(industry=INDUSTRY)

    assert field("$lookup('industry', industry)", record, context) is MISSING
    assert field("$lookup('industry', industry)", record, context, keep_nulls=True) is None


def test_lookup_in_an_unknown_table_is_a_mapping_error():
    with pytest.raises(MappingError, match="no lookup table 'sector'"):
        field("$lookup('sector', industry)", {"industry": "Software"}, lookups(industry=INDUSTRY))


def test_reverse_lookup_gives_the_key():
    assert (
        field(
            "$reverseLookup('industry', industry)",
            {"industry": "RETAIL"},
            lookups(industry=INDUSTRY),
        )
        == "Retail"
    )


def test_reverse_lookup_of_a_value_two_keys_share_gives_the_first_key():
    context = lookups(status={"open": "OPEN", "reopened": "OPEN", "closed": "CLOSED"})

    assert field("$reverseLookup('status', s)", {"s": "OPEN"}, context) == "open"


def test_reverse_lookup_of_a_number_value():
    context = lookups(priority={"low": 1, "high": 3})

    assert field("$reverseLookup('priority', p)", {"p": 3}, context) == "high"


def test_reverse_lookup_miss_is_a_mapping_error_unless_a_fallback_is_given():
    context = lookups(industry=INDUSTRY)

    with pytest.raises(MappingError, match="no entry of lookup table 'industry' maps to 'MINING'"):
        field("$reverseLookup('industry', v)", {"v": "MINING"}, context)
    assert field("$reverseLookup('industry', v, 'Other')", {"v": "MINING"}, context) == "Other"
    assert field("$reverseLookup('industry', v, null)", {"v": "MINING"}, context) is MISSING


def test_reverse_lookup_sees_the_instance_overlay():
    overlaid = LookupTable.from_spec("industry", INDUSTRY).overlaid(
        {"Saas": "COMPUTER_SOFTWARE", "Software": "SOFTWARE"}
    )
    context = TransformContext(lookups={"industry": overlaid})

    assert field("$reverseLookup('industry', v)", {"v": "SOFTWARE"}, context) == "Software"
    assert field("$reverseLookup('industry', v)", {"v": "COMPUTER_SOFTWARE"}, context) == "Saas"


# -- nulls -----------------------------------------------------------------------------


NULLS_MAP = {
    "phone": "phone",
    "fax": "fax",
    "city": "address.city",
    "parent.id": "parentId",
    "name": "name",
}
NULLS_RECORD = {"phone": None, "address": None, "parentId": None, "name": "Acme"}  # no fax


def test_null_and_missing_fields_are_left_out_by_default():
    assert apply({"map": NULLS_MAP}, NULLS_RECORD) == {"name": "Acme"}


def test_keep_nulls_sends_null_for_null_and_missing_fields_so_they_are_cleared():
    payload = apply({"map": NULLS_MAP, "keepNulls": True}, NULLS_RECORD)

    assert payload == {
        "phone": None,
        "fax": None,
        "city": None,
        "parent": {"id": None},
        "name": "Acme",
    }


def test_null_in_the_input_is_like_a_missing_field():
    """``$lowercase(email)`` of an empty email yields nothing instead of failing."""
    spec = {"map": {"email": "$lowercase(email)", "kind": "$exists(email) ? 'x' : 'none'"}}

    assert apply(spec, {"email": None}) == apply(spec, {}) == {"kind": "none"}


def test_nulls_nested_in_the_input_are_absent_too():
    spec = {"map": {"city": "$count(addresses[$exists(city)])"}}

    assert apply(spec, {"addresses": [{"city": None}, {"city": "Lyon"}]}) == {"city": 1}


@pytest.mark.parametrize(("keep_nulls", "expected"), [(False, MISSING), (True, None)])
def test_external_id_of_null_yields_nothing(keep_nulls, expected):
    context = TransformContext(links=PreloadedLinks())  # empty: any look-up would raise

    assert (
        field(
            "$externalId('account', parentAccountId)",
            {"parentAccountId": None},
            context,
            keep_nulls=keep_nulls,
        )
        is expected
    )


def test_apply_does_not_modify_the_record():
    record = {"a": None, "b": {"c": None, "d": [None, {"e": None}]}}
    before = copy.deepcopy(record)

    apply({"map": {"a": "a", "b": "b"}, "keepNulls": True}, record)

    assert record == before


# -- dates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T12:00:00+02:00", 1714557600000),
        ("2024-05-01T10:00:00Z", 1714557600000),
        ("2024-05-01T10:00:00.123Z", 1714557600123),
        ("2024-05-01T10:00:00", 1714557600000),  # naive: UTC
        ("2024-05-01", 1714521600000),  # a date: midnight UTC
        ("1969-12-31T23:59:59.500Z", -500),
        (1714557600000, 1714557600000),  # already millis
    ],
)
def test_epoch_millis(value, expected):
    assert field("$epochMillis(d)", {"d": value}) == expected


@pytest.mark.parametrize(
    "iso",
    [
        "2004-04-08T11:06:02.985Z",
        "1978-08-24T22:22:02.252Z",
        "2107-09-14T03:39:03.464Z",
        "1952-09-04T09:30:17.468Z",
    ],
)
def test_epoch_millis_is_exact_to_the_millisecond(iso):
    """Float ``timestamp() * 1000`` gave …984 for …985 on these."""
    millis = field("$epochMillis(d)", {"d": iso})

    assert field("$isoDateTime(m)", {"m": millis}) == iso


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1714557600000, "2024-05-01T10:00:00Z"),
        (1714557600123, "2024-05-01T10:00:00.123Z"),
        ("1714557600000", "2024-05-01T10:00:00Z"),
        ("2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00Z"),
        ("2024-05-01T12:00:00.5+02:00", "2024-05-01T10:00:00.500Z"),
        ("2024-05-01T10:00:00", "2024-05-01T10:00:00Z"),
        ("2024-05-01", "2024-05-01T00:00:00Z"),
    ],
)
def test_iso_date_time_is_utc(value, expected):
    assert field("$isoDateTime(d)", {"d": value}) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1714557600000, "2024-05-01"),
        ("2024-05-01", "2024-05-01"),
        ("2024-05-01T10:00:00Z", "2024-05-01"),
        (1714600800000, "2024-05-01"),  # 22:00 UTC
    ],
)
def test_iso_date(value, expected):
    assert field("$isoDate(d)", {"d": value}) == expected


@pytest.mark.parametrize("helper", ["epochMillis", "isoDateTime", "isoDate"])
@pytest.mark.parametrize(
    "value",
    ["garbage", "2024-13-01", "2024-02-30T10:00:00Z", True, {"y": 2024}],
    ids=["text", "month 13", "feb 30", "boolean", "object"],
)
def test_invalid_date_is_a_mapping_error(helper, value):
    with pytest.raises(MappingError) as caught:
        field(f"${helper}(d)", {"d": value})

    assert caught.value.details == {"transform": "T", "field": "f"}


@pytest.mark.parametrize("helper", ["epochMillis", "isoDateTime", "isoDate"])
@pytest.mark.parametrize("record", [{"d": None}, {}], ids=["null", "missing"])
def test_dates_of_nothing_give_nothing(helper, record):
    assert field(f"${helper}(d)", record) is MISSING


# -- $coalesce, $var -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"a": "x", "b": "y"}, "x"),
        ({"a": None, "b": "", "c": "z"}, "z"),
        ({"b": "y"}, "y"),
        ({"a": 0, "b": "y"}, 0),
        ({"a": False, "b": "y"}, False),
        ({"a": None, "b": "", "c": None}, MISSING),
        ({}, MISSING),
    ],
    ids=[
        "first",
        "skips null and empty",
        "skips missing",
        "zero counts",
        "false counts",
        "all empty",
        "all missing",
    ],
)
def test_coalesce_gives_the_first_value_that_is_not_null_or_empty(record, expected):
    assert field("$coalesce(a, b, c)", record) == expected


def test_var_reads_the_context_variables():
    context = TransformContext(variables={"region": "eu-west", "portalId": 123})

    assert apply(
        {"map": {"region": "$var('region')", "url": "'/p/' & $var('portalId')"}}, {}, context
    ) == {"region": "eu-west", "url": "/p/123"}


def test_missing_var_is_a_mapping_error():
    context = TransformContext(variables={"region": "eu-west"})

    with pytest.raises(MappingError, match="no variable 'tenant'") as caught:
        field("$var('tenant')", {}, context)

    assert caught.value.details["field"] == "f"


# -- links -----------------------------------------------------------------------------

LINKS = PreloadedLinks(
    external={("account", "42"): "ext-42", ("account", "7"): None},
    bss={("account", "ext-42"): "42", ("account", "ext-gone"): None},
)


@pytest.mark.parametrize("bss_id", ["42", 42], ids=["string", "number"])
def test_external_id_of_a_linked_record(bss_id):
    context = TransformContext(links=LINKS)

    assert field("$externalId('account', accountId)", {"accountId": bss_id}, context) == "ext-42"


def test_bss_id_of_a_linked_record():
    context = TransformContext(links=LINKS)

    assert field("$bssId('account', companyId)", {"companyId": "ext-42"}, context) == "42"


@pytest.mark.parametrize(
    ("expression", "record_id"),
    [("$externalId('account', ref)", "7"), ("$bssId('account', ref)", "ext-gone")],
)
def test_a_record_without_a_link_is_a_retryable_dependency(expression, record_id):
    ref: Any = 7 if record_id == "7" else record_id
    context = TransformContext(links=LINKS)

    with pytest.raises(DependencyPending) as caught:
        field(expression, {"ref": ref}, context)

    assert (caught.value.entity, caught.value.record_id) == ("account", record_id)
    assert isinstance(caught.value, TransientError) and caught.value.retryable


@pytest.mark.parametrize(
    ("expression", "wanted"),
    [
        ("$externalId('contact', ref)", [("external", "contact", "99")]),
        ("$bssId('contact', ref)", [("bss", "contact", "99")]),
    ],
)
def test_links_not_loaded_asks_for_what_is_wanted(expression, wanted):
    with pytest.raises(LinksNotLoaded) as caught:
        field(expression, {"ref": 99}, TransformContext(links=LINKS))

    assert caught.value.wanted == wanted


def test_links_not_loaded_from_inside_an_array_mapping():
    record = {"lines": [{"productId": "p1"}, {"productId": "p2"}]}

    with pytest.raises(LinksNotLoaded) as caught:
        field(
            "lines.{'product': $externalId('product', productId)}[]",
            record,
            TransformContext(links=PreloadedLinks()),
        )

    assert caught.value.wanted == [("external", "product", "p1")]


@pytest.mark.parametrize("helper", ["externalId", "bssId"])
def test_link_helpers_without_a_link_table_are_mapping_errors(helper):
    with pytest.raises(MappingError, match="no link table"):
        field(f"${helper}('account', ref)", {"ref": "1"}, TransformContext(links=None))


# -- evaluation and syntax errors ------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "record"),
    [
        ("$lowercase(5)", {}),
        ("$lowercase(name)", {"name": 5}),
        ("amount / 0", {"amount": 1}),
        ("$number(amount)", {"amount": "twelve"}),
        ("$lookup('industry')", {}),
        ("$error('stop here')", {}),
    ],
    ids=[
        "bad argument",
        "bad input type",
        "division by zero",
        "bad number",
        "helper arity",
        "$error",
    ],
)
def test_runtime_failures_are_mapping_errors_naming_the_field(expression, record):
    transform = build_transform(
        "AccountToCompany", {"map": {"name": "'ok'", "website": expression}}
    )

    with pytest.raises(MappingError) as caught:
        transform.apply(record, lookups(industry=INDUSTRY))

    assert caught.value.details == {"transform": "AccountToCompany", "field": "website"}
    assert "field website" in str(caught.value)


def test_nested_field_name_in_a_mapping_error_is_dotted():
    with pytest.raises(MappingError) as caught:
        apply({"map": {"billing.city": "$lowercase(city)"}}, {"city": 5})

    assert caught.value.details["field"] == "billing.city"


@pytest.mark.parametrize(
    ("source", "position"),
    [("a +", 3), ("(a", 2), ("'unterminated", 13), ("a.b.", 4)],
)
def test_syntax_error_has_a_position(source, position):
    with pytest.raises(ExpressionSyntaxError) as caught:
        compile_expression(source)

    assert caught.value.position == position
    assert f"at character {position}" in str(caught.value)


def test_a_transform_with_a_syntax_error_does_not_build():
    with pytest.raises(ExpressionSyntaxError):
        build_transform("T", {"map": {"good": "name", "bad": "$lowercase(name"}})


# -- whole-expression transforms -------------------------------------------------------


def test_expression_transform_builds_the_whole_payload():
    spec = {
        "expression": "{'filterGroups': [{'filters': [{'propertyName': 'email', "
        "'operator': 'EQ', 'value': $lowercase(email)}]}], 'limit': 1}"
    }

    assert apply(spec, {"email": "A@B.example"}) == {
        "filterGroups": [
            {"filters": [{"propertyName": "email", "operator": "EQ", "value": "a@b.example"}]}
        ],
        "limit": 1,
    }


EXPRESSION_WITH_NULLS = (
    "{'name': name, 'phone': null, "
    "'address': {'city': city, 'zip': null}, "
    "'contacts': [{'email': 'a@b.example', 'fax': null}]}"
)


def test_expression_transform_drops_nulls_recursively():
    payload = apply({"expression": EXPRESSION_WITH_NULLS}, {"name": "Acme", "city": None})

    assert payload == {"name": "Acme", "address": {}, "contacts": [{"email": "a@b.example"}]}


def test_expression_transform_keeps_nulls_when_asked():
    payload = apply(
        {"expression": EXPRESSION_WITH_NULLS, "keepNulls": True}, {"name": "Acme", "city": "Lyon"}
    )

    assert payload == {
        "name": "Acme",
        "phone": None,
        "address": {"city": "Lyon", "zip": None},
        "contacts": [{"email": "a@b.example", "fax": None}],
    }


@pytest.mark.parametrize("expression", ["'text'", "[1, 2]", "42", "true", "null"])
def test_expression_transform_must_produce_an_object(expression):
    with pytest.raises(MappingError, match="transform CompanySearch must produce an object"):
        apply({"expression": expression}, {}, name="CompanySearch")


def test_expression_transform_that_yields_nothing_is_an_empty_payload():
    assert apply({"expression": "nothing"}, {"name": "Acme"}) == {}


def test_expression_transform_runtime_error_is_a_mapping_error():
    with pytest.raises(MappingError) as caught:
        apply({"expression": "{'a': $lowercase(5)}"}, {}, name="X")

    assert caught.value.details == {"transform": "X", "field": "(expression)"}


# -- the fast path for plain field paths -----------------------------------------------

PATH_INPUTS = [
    {},
    {"a": None},
    {"a": {"b": None}},
    {"a": {"b": 1}},
    {"a": {"b": "text"}},
    {"a": {"b": 1.5}},
    {"a": {"b": False}},
    {"a": {"b": {"c": {"d": 1}}}},
    {"a": {"b": []}},
    {"a": {"b": [1]}},
    {"a": {"b": [None]}},
    {"a": {"b": [[1, 2], [3]]}},
    {"a": {"b": {"x": None}}},
    {"a": {"c": 1}},
    {"a": [{"b": 1}, {"b": 2}]},
    {"a": [{"b": 1}]},
    {"a": [{"c": 1}]},
    {"a": [{"b": [1, 2]}, {"b": 3}]},
    {"a": [None, {"b": 1}]},
    {"a": []},
    {"a": "text"},
    {"a": 5},
    {"a": True},
    [{"a": {"b": 1}}, {"a": {"b": 2}}],
    [],
    None,
    "text",
]


@pytest.mark.parametrize("path", ["a", "a.b", "a.b.c"])
@pytest.mark.parametrize("data", PATH_INPUTS, ids=repr)
def test_fast_path_gives_the_interpreters_result(path, data):
    fast = Expression(path, fast=True)
    interpreted = Expression(f"({path})", fast=True)
    assert fast._path is not None and interpreted._path is None  # the two routes differ

    expected = interpreted.evaluate(data)
    actual = fast.evaluate(data)

    assert actual == expected
    assert type(actual) is type(expected)  # None (null) and UNDEFINED stay apart


def test_fast_path_distinguishes_null_from_missing():
    expression = Expression("a.b", fast=True)

    assert expression.evaluate({"a": {"b": None}}) is None
    assert expression.evaluate({"a": {}}) is UNDEFINED


@pytest.mark.parametrize(("source", "expected"), [("true", True), ("false", False), ("null", None)])
def test_keywords_are_not_field_names(source, expected):
    assert Expression(source).evaluate({source: "a field"}) is expected


# -- templates -------------------------------------------------------------------------


def render(source: Any, data: Any = None, context: TransformContext | None = None) -> Any:
    return compile_template(source).render(data or {}, context or TransformContext())


@pytest.mark.parametrize("source", ["updatedAt", "", 100, True, None, {"a": 1}])
def test_literal_templates_render_as_themselves(source):
    template = compile_template(source)

    assert template.is_literal
    assert template.render({"updatedAt": "x"}, TransformContext()) == source


@pytest.mark.parametrize("value", [5, 2.5, True, False, 0, [1, 2], {"k": "v"}, "text"])
def test_a_sole_placeholder_keeps_the_value_type(value):
    rendered = render("{value}", {"value": value})

    assert rendered == value
    assert type(rendered) is type(value)


@pytest.mark.parametrize("record", [{}, {"code": None}], ids=["missing", "null"])
def test_a_sole_placeholder_yielding_nothing_is_undefined(record):
    assert render("{record.code}", {"record": record}) is UNDEFINED


@pytest.mark.parametrize(
    ("source", "data", "expected"),
    [
        ("/companies/{record.code}", {"record": {"code": "C1"}}, "/companies/C1"),
        ("{a}-{b}", {"a": 1, "b": "x"}, "1-x"),
        ("n={n}", {"n": 2.0}, "n=2"),
        ("n={n}", {"n": 2.5}, "n=2.5"),
        ("flag={f}", {"f": True}, "flag=true"),
        ("id-{missing}", {}, "id-"),
        ("id-{n}", {"n": None}, "id-"),
        ("[{a}{b}]", {}, "[]"),
    ],
)
def test_mixed_templates_join_text(source, data, expected):
    assert render(source, data) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [("{{literal}}", "{literal}"), ("a}}b{{c", "a}b{c"), ("{{{n}}}", "{5}")],
)
def test_doubled_braces_are_literal_braces(source, expected):
    assert render(source, {"n": 5}) == expected


@pytest.mark.parametrize(
    ("source", "position"),
    [("{", 1), ("}", 1), ("a}b", 2), ("x{a", 2), ("{a}}", 4), ("{}", 1), ("{   }", 1)],
    ids=["lone open", "lone close", "close in text", "unclosed", "extra close", "empty", "blank"],
)
def test_unbalanced_or_empty_placeholders_are_syntax_errors(source, position):
    with pytest.raises(TemplateSyntaxError) as caught:
        compile_template(source)

    assert caught.value.position == position


def test_a_placeholder_that_does_not_parse_is_a_template_syntax_error():
    with pytest.raises(TemplateSyntaxError, match=r"in placeholder \{a \+\}") as caught:
        compile_template("x-{a +}")

    assert caught.value.position == 4


def test_object_constructor_braces_inside_a_placeholder():
    assert render("{ {'id': n} }", {"n": 7}) == {"id": 7}
    assert render("x{ {'id': n}.id }y", {"n": 7}) == "x7y"


@pytest.mark.parametrize(
    ("source", "expected"), [("{'}'}", "}"), ('{"{"}', "{"), ("<{'a}b' & n}>", "<a}b1>")]
)
def test_braces_inside_string_literals_do_not_close_the_placeholder(source, expected):
    assert render(source, {"n": 1}) == expected


def test_template_expressions_are_listed():
    template = compile_template("/a/{x}/b/{y}")

    assert [e.source for e in template.expressions()] == ["x", "y"]
    assert not template.is_literal


def test_template_helpers_read_the_context():
    context = TransformContext(variables={"portal": "p1"}, links=LINKS)

    assert (
        render("/{$var('portal')}/{$externalId('account', id)}", {"id": "42"}, context)
        == "/p1/ext-42"
    )


@pytest.mark.parametrize(
    "source",
    ["{$var('nope')}", "x-{$lowercase(5)}", "{$number(a)}", "{$lookup('t')}", "{n / 0}"],
    ids=["helper error", "jsonata error", "bad number", "helper arity", "division by zero"],
)
def test_template_evaluation_failures_are_mapping_errors(source):
    with pytest.raises(MappingError, match="template"):
        render(source, {"a": "x", "n": 1})


def test_template_lets_link_signals_through():
    with pytest.raises(LinksNotLoaded):
        render(
            "{$externalId('account', id)}", {"id": "1"}, TransformContext(links=PreloadedLinks())
        )
    with pytest.raises(DependencyPending):
        render("/x/{$externalId('account', id)}", {"id": "7"}, TransformContext(links=LINKS))


# -- static analysis -------------------------------------------------------------------


def calls(source: str) -> list[tuple[str, list[Any]]]:
    return sorted((name, args) for name, args, _ in function_calls(compile_expression(source)))


def test_function_calls_lists_names_and_literal_arguments():
    assert calls("$lookup('industry', industry, 'OTHER')") == [
        ("lookup", ["industry", UNDEFINED, "OTHER"])
    ]
    assert calls("$lookup(table, 5)") == [("lookup", [UNDEFINED, 5])]
    assert calls("$lowercase($trim(name))") == [("lowercase", [UNDEFINED]), ("trim", [UNDEFINED])]
    assert calls("name") == []


def test_function_call_position_is_its_opening_parenthesis():
    source = "$lowercase($trim(name))"

    positions = {name: position for name, _, position in function_calls(compile_expression(source))}

    assert positions == {
        "lowercase": source.index("(") + 1,
        "trim": source.index("(", source.index("(") + 1) + 1,
    }


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("addresses[$lookup('addressType', type) = 'B'][0].city", ("lookup", "addressType")),
        ("$count(a[$var('kind') = kind])", ("var", "kind")),
        ("lines.{'sku': $lookup('sku', code)}[]", ("lookup", "sku")),
        ("a ? $var('x') : null", ("var", "x")),
        ("$map(lines, function($l) { $externalId('product', $l.id) })", ("externalId", "product")),
        ("$ ~> |lines[$lookup('t', k) = 1]|{'x': 1}|", ("lookup", "t")),
        ("$ ~> |lines|{'x': $var('v')}|", ("var", "v")),
        ("a^(>$lookup('order', k))", ("lookup", "order")),
        ("a{$lookup('group', k): b}", ("lookup", "group")),
    ],
    ids=[
        "filter",
        "filter in call",
        "object constructor",
        "condition",
        "lambda body",
        "transform pattern",
        "transform update",
        "sort term",
        "group by",
    ],
)
def test_function_calls_are_found_wherever_they_are_nested(source, expected):
    name, first = expected

    assert (name, first) in {(n, args[0]) for n, args in calls(source) if args}


def test_bound_names_are_assignments_and_lambda_parameters():
    assert bound_names(compile_expression("($f := function($x, $y) { $x + $y }; $f(1, 2))")) == {
        "f",
        "x",
        "y",
    }
    assert bound_names(compile_expression("$map(a, function($v) { $v * 2 })")) == {"v"}
    assert bound_names(compile_expression("$lookup('t', a)")) == set()


def test_a_locally_defined_function_is_a_call_with_a_bound_name():
    expression = compile_expression("($f := function($x) { $x }; $f(1))")

    assert [(n, a) for n, a, _ in function_calls(expression)] == [("f", [1])]
    assert "f" in bound_names(expression)


def test_builtin_function_names_are_jsonatas_standard_library():
    names = builtin_function_names()

    assert {"lowercase", "sum", "map", "string", "now"} <= names
    assert not {"var", "externalId", "bssId", "coalesce", "epochMillis"} & names


# -- context isolation -----------------------------------------------------------------


def test_using_context_restores_the_previous_one_when_nested():
    outer, inner = TransformContext(variables={"v": 1}), TransformContext(variables={"v": 2})

    with using_context(outer):
        with using_context(inner):
            assert current_context() is inner
        assert current_context() is outer
    assert current_context() is EMPTY_CONTEXT


def test_using_context_restores_after_an_error():
    with pytest.raises(RuntimeError), using_context(TransformContext(variables={"v": 1})):
        raise RuntimeError("boom")

    assert current_context() is EMPTY_CONTEXT


def test_apply_does_not_leak_its_context():
    expression = compile_expression("$var('v')")
    apply({"map": {"v": "$var('v')"}}, {}, TransformContext(variables={"v": "x"}))

    with pytest.raises(HelperError):
        expression.evaluate({})


def test_each_apply_sees_its_own_context():
    transform = build_transform(
        "T", {"map": {"tier": "$lookup('tier', t)", "key": "$reverseLookup('tier', 'GOLD')"}}
    )
    connector = LookupTable.from_spec("tier", {"1": "GOLD"})
    first = TransformContext(lookups={"tier": connector})
    second = TransformContext(lookups={"tier": connector.overlaid({"1": "SILVER", "9": "GOLD"})})

    assert transform.apply({"t": "1"}, first) == {"tier": "GOLD", "key": "1"}
    assert transform.apply({"t": "1"}, second) == {"tier": "SILVER", "key": "9"}
    assert transform.apply({"t": "1"}, first) == {"tier": "GOLD", "key": "1"}


def test_a_helper_in_one_transform_sees_the_context_of_the_call_in_progress():
    """A template rendered while a transform's context is current uses its own context."""
    template = compile_template("{$var('v')}")
    outer = TransformContext(variables={"v": "outer"})

    with using_context(outer):
        assert template.render({}, TransformContext(variables={"v": "inner"})) == "inner"
        assert current_context() is outer


# -- reverse lookups of non-string values, templates with objects, digit strings ----------


def _apply(expression: str, record: dict[str, Any], lookups: dict[str, LookupTable]) -> Any:
    transform = build_transform("T", {"map": {"out": expression}})
    return transform.apply(record, TransformContext(lookups=lookups)).get("out")


def test_reverse_lookup_keeps_booleans_apart_from_numbers():
    table = {"flags": LookupTable("flags", {"on": True, "one": 1, "off": False, "zero": 0})}
    assert _apply("$reverseLookup('flags', v)", {"v": 1}, table) == "one"
    assert _apply("$reverseLookup('flags', v)", {"v": True}, table) == "on"
    assert _apply("$reverseLookup('flags', v)", {"v": 0}, table) == "zero"
    assert _apply("$reverseLookup('flags', v)", {"v": 1.0}, table) == "one"


def test_reverse_lookup_of_object_values():
    table = {"t": LookupTable("t", {"gold": {"tier": 1}, "silver": {"tier": 2}})}
    assert _apply("$reverseLookup('t', v)", {"v": {"tier": 2}}, table) == "silver"
    with pytest.raises(MappingError, match="no entry of lookup table 't' maps to"):
        _apply("$reverseLookup('t', v)", {"v": {"tier": 3}}, table)


def test_mixed_text_template_renders_objects_as_json():
    template = compile_template("filter={f}")
    assert template.render({"f": {"a": [1, "x"]}}, EMPTY_CONTEXT) == 'filter={"a":[1,"x"]}'


def test_short_digit_strings_are_not_epoch_millis():
    assert _apply("$isoDate(v)", {"v": "20240501"}, {}) == "2024-05-01"  # ISO 8601 basic
    with pytest.raises(MappingError, match="not an ISO 8601 date or time"):
        _apply("$isoDate(v)", {"v": "2024"}, {})
    assert _apply("$isoDate(v)", {"v": "1714521600000"}, {}) == "2024-05-01"
