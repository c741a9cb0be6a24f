"""`verifier ls` and `verifier report`: a run folder looked at again without re-running it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from verifier.cli import main
from verifier.config import VerifierConfig
from verifier.reference_models import reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FIXTURE = reference_model_path("fixture-16px")
MEMORIZED, HELD_OUT = "dup00-astronaut-x400", "held-flower-whole"
POLICY = FIXTURE.parents[2] / "configs" / "policies" / "default.toml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from verifier.api import certify

    out = tmp_path_factory.mktemp("listing") / "certs"
    certify(FIXTURE, [FIXTURE / "images" / f"{name}.png" for name in (MEMORIZED, HELD_OUT)], out,
            VerifierConfig(device="cpu", decode_witness=False))
    return out


def test_ls_prints_every_certificate_and_its_json_form(run):
    table = CliRunner().invoke(main, ["ls", str(run)])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == ["image", "verdict", "err.ratio", "repl.rate", "category", "part", "schema"]
    assert any(line.startswith(MEMORIZED) and "memorized" in line and "unintended" in line for line in lines)
    assert any(line.startswith(HELD_OUT) and "not_memorized" in line for line in lines)
    listed = json.loads(CliRunner().invoke(main, ["ls", str(run), "--json"]).output)
    by_id = {row["id"]: row for row in listed}
    certificate = json.loads((run / f"{MEMORIZED}.json").read_text())
    assert by_id[MEMORIZED]["error_ratio"] == certificate["conditions"]["existence"]["value"]
    assert by_id[MEMORIZED]["category"] == "unintended" and by_id[HELD_OUT]["category"] is None
    assert all(row["problem"] is None for row in listed)


def test_ls_lists_an_older_certificate_and_says_so(copy):
    path = copy / f"{HELD_OUT}.json"
    old = json.loads(path.read_text())
    old["schema"]["version"] = 7
    del old["classification"], old["context"], old["prompts"], old["readable_prompt"]
    path.write_text(json.dumps(old))
    listed = {row["id"]: row for row in json.loads(CliRunner().invoke(main, ["ls", str(copy), "--json"]).output)}
    assert listed[HELD_OUT]["verdict"] == "not_memorized" and listed[HELD_OUT]["schema_version"] == 7
    assert "schema version 7" in listed[HELD_OUT]["problem"] and listed[MEMORIZED]["problem"] is None
    result = CliRunner().invoke(main, ["report", str(copy)])
    assert result.exit_code == 3 and "schema version 7" in result.output and "Re-certify" in result.output


def test_report_rebuilds_summary_and_report_and_applies_a_policy(run, copy):
    from verifier.verify import verify

    original = json.loads((run / "summary.json").read_text())
    (copy / "summary.json").unlink()
    (copy / "report.html").unlink()
    result = CliRunner().invoke(main, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    rebuilt = json.loads((copy / "summary.json").read_text())
    assert rebuilt["images"] == original["images"] and rebuilt["counts"] == original["counts"]
    report = (copy / "report.html").read_text()
    # each image (in the table and its section), its closest generation and its contact sheet
    assert report.count("data:image/png;base64,") == 8
    assert verify(copy, images=[FIXTURE / "images"]).passed
    result = CliRunner().invoke(main, ["report", str(copy), "--policy", str(POLICY)])
    gated = json.loads((copy / "summary.json").read_text())
    assert result.exit_code == 0 and gated["gate_failed"] is True and gated["policy"]["source"] == str(POLICY)


def test_ls_and_report_name_a_folder_without_certificates(tmp_path):
    for command in (["ls", str(tmp_path)], ["report", str(tmp_path)], ["ls", str(tmp_path / "missing")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 3, result.output
        assert "no verifier certificate" in result.output or "does not exist" in result.output
