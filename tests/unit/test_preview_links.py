"""Preview placeholders for linked ids (tests/data/vendor/linked.yaml): what the target
field's schema says of a placeholder is a note naming the ``--link`` that gives a real
id, never a false error; a real id given with ``--link`` is checked like any value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.cli.main import main
from shared.connector import load_connector
from shared.connector.preview import PlaceholderLinks, preview_push

ROOT = Path(__file__).resolve().parents[2]
LINKED = ROOT / "tests" / "data" / "vendor" / "linked.yaml"
CONTACT = ROOT / "tests" / "data" / "entities" / "contact.json"
ACCOUNT_ID = "acc_01HV3K8Q2Z7M4N5P6R7S8T9V0W"
UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
TITLE = "push create: Contact (contact)"


@pytest.fixture(scope="module")
def linked():
    return load_connector(LINKED)


def contact(**changes) -> dict:
    return {**json.loads(CONTACT.read_text()), **changes}


def test_a_placeholder_the_schema_refuses_is_a_note_naming_the_link(linked):
    preview = preview_push(linked, linked.objects["Contact"], contact(), "create")
    assert preview.errors == []
    assert preview.requests[0].body["company_id"] == f"<account {ACCOUNT_ID} in the third party>"
    (note,) = [n for n in preview.notes if "placeholder the schema refuses" in n]
    assert note.startswith(f"{TITLE}: body /company_id holds a placeholder the schema refuses (")
    assert "is too long" in note and "does not match" in note
    assert note.endswith(f"not checked; give the real id with --link "
                         f"account:{ACCOUNT_ID}=EXTERNAL_ID")
    assert f"✓ {TITLE}: body valid against the request schema of POST /contacts, but for " \
           "linked ids' placeholders" in preview.notes


def test_other_fields_are_still_checked(linked):
    preview = preview_push(linked, linked.objects["Contact"], contact(firstName="Claire-Marie "
                                                                      "Antoinette"), "create")
    assert preview.errors == [
        f"{TITLE}: body breaks the request schema of POST /contacts at /name: "
        "'Claire-Marie Antoinette' is too long"]


@pytest.mark.parametrize(("external_id", "errors"), [
    (UUID, []),
    ("4711", [f"{TITLE}: body breaks the request schema of POST /contacts at /company_id: "
              "'4711' does not match '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
              "[0-9a-f]{12}$'"]),
])
def test_a_linked_id_given_is_sent_and_checked(linked, external_id, errors):
    preview = preview_push(linked, linked.objects["Contact"], contact(), "create",
                           links={("account", ACCOUNT_ID): external_id})
    assert preview.requests[0].body["company_id"] == external_id
    assert preview.errors == errors
    assert not [n for n in preview.notes if "placeholder the schema refuses" in n]


def test_a_bss_id_placeholder_names_the_link_the_other_way():
    links = PlaceholderLinks({("account", "acc_1"): "4711"})
    assert links.bss_id("account", "4711") == "acc_1"
    shown = links.bss_id("account", "9")
    kept, notes = links.waived({"accountId": shown, "x": 1},
                               [("/accountId", "is too long"), ("/x", "is not a string")])
    assert kept == [("/x", "is not a string")]
    assert notes == ["/accountId holds a placeholder the schema refuses (is too long): not "
                     "checked; give the real id with --link account:BSS_ID=9"]


def test_cli_link_option(capsys):
    args = ["preview", str(LINKED), "--object", "Contact", "--direction", "push",
            "--record", str(CONTACT)]
    assert main(args) == 0
    assert f"--link account:{ACCOUNT_ID}=EXTERNAL_ID" in capsys.readouterr().out
    assert main([*args, "--link", f"account:{ACCOUNT_ID}={UUID}"]) == 0
    assert f'"company_id": "{UUID}"' in capsys.readouterr().out
    assert main([*args, "--link", f"account:{ACCOUNT_ID}=4711"]) == 1
    assert "at /company_id: '4711' does not match" in capsys.readouterr().out


@pytest.mark.parametrize(("link", "says"), [
    ("account=4711", "expected ENTITY:BSS_ID=EXTERNAL_ID"),
    ("account:acc_1", "expected ENTITY:BSS_ID=EXTERNAL_ID"),
    ("company:acc_1=4711", "unknown entity 'company'"),
])
def test_cli_link_takes_entity_bss_id_equals_external_id(link, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["preview", str(LINKED), "--object", "Contact", "--direction", "push",
              "--record", str(CONTACT), "--link", link])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
