"""The reference app's payload models: committed JSON Schema, and refusal of bad payloads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import schemas
from hms_bus import cli

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "schemas" / "json"


def test_committed_json_schemas_match_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["schemas", "export", "schemas", "--out", str(COMMITTED), "--check"])
    assert code == 0, (
        "schemas/json is stale: run `hms-bus schemas export schemas --out schemas/json` "
        f"and commit the result\n{capsys.readouterr().err}"
    )


def test_check_fails_on_a_stale_missing_or_extra_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "json"
    shutil.copytree(COMMITTED, out)
    (out / "PaymentRequest.json").write_text("{}\n")
    (out / "Applicant.json").unlink()
    (out / "Old.json").write_text("{}\n")
    assert cli.main(["schemas", "export", "schemas", "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "PaymentRequest.json: differs from the model" in err
    assert "Applicant.json: missing for the model" in err
    assert "Old.json: no model of schemas produces it" in err
    assert cli.main(["schemas", "export", "schemas", "--out", str(out)]) == 0
    assert "wrote 2 schema(s)" in capsys.readouterr().out
    assert cli.main(["schemas", "export", "schemas", "--out", str(out), "--check"]) == 1


def test_exported_schemas_mark_sensitive_fields_and_use_wire_names() -> None:
    account = json.loads((COMMITTED / "BankAccount.json").read_text())
    assert account["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(account["properties"]) == {"routingNumber", "accountNumber"}
    assert account["properties"]["accountNumber"]["x-sensitive"] is True
    assert "x-sensitive" not in account["properties"]["routingNumber"]
    names = {p.stem for p in COMMITTED.glob("*.json")}
    exported = {n for n in schemas.__all__ if isinstance(getattr(schemas, n), type)}
    assert names == exported


def test_an_app_exports_its_input_models(tmp_path: Path) -> None:
    target = tmp_path / "app"
    assert (
        cli.main(["schemas", "export", "step_handlers.management_layer:mgmt", "--out", str(target)])
        == 0
    )
    assert {p.name for p in target.iterdir()} == {"PaymentRequest.json"}


def test_export_refuses_what_is_not_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["schemas", "export", "json:dumps"])
    assert exc.value.code == 2
    assert "neither a pydantic model nor an hms_bus.Management" in capsys.readouterr().err
