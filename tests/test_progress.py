"""Progress: bars on a terminal only, a JSON-lines log for CI that follows images and stages."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner

from verifier.cli import main
from verifier.progress import RunProgress
from verifier.reference_models import reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FIXTURE = reference_model_path("fixture-16px")
IMAGE = FIXTURE / "images" / "dup00-astronaut-x400.png"


def test_the_log_follows_images_and_stages_and_the_bars_stay_off_without_a_terminal(tmp_path):
    log = tmp_path / "progress.jsonl"
    out = tmp_path / "certs"
    result = CliRunner().invoke(main, ["certify", str(FIXTURE), str(IMAGE), "--out", str(out), "--device", "cpu",
                                       "--progress-log", str(log), "--no-decode-witness"])
    assert result.exit_code == 1, result.output  # the image is memorized
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[0]["event"] == "start" and (events[0]["images_done"], events[0]["images_total"]) == (0, 1)
    assert events[-1]["event"] == "end"
    assert [e["images_done"] for e in events if e["event"] == "images"] == [1]
    certificate = json.loads((out / "dup00-astronaut-x400.json").read_text())
    steps = [e["done"] for e in events if e["event"] == "advance" and e["stage"] == "invert"]
    assert steps == list(range(1, certificate["prediction_error"]["inversion_steps"] + 1))
    generated = [e for e in events if e["event"] == "advance" and e["stage"] == "generate"]
    assert generated[-1]["done"] == sum(s["generations"] for s in certificate["conditions"]["probability"]["per_scale"])
    assert "\r" not in result.output and "dup00-astronaut-x400: memorized" in result.output
    # Resumed: every image already done at the start; --quiet drops the line per image.
    quiet = CliRunner().invoke(main, ["certify", str(FIXTURE), str(IMAGE), "--out", str(out), "--device", "cpu",
                                      "--progress-log", str(log), "--no-decode-witness", "--quiet"])
    resumed = [json.loads(line) for line in log.read_text().splitlines()][len(events):]
    assert resumed[0]["event"] == "start" and resumed[0]["images_done"] == resumed[0]["images_total"] == 1
    assert "resuming" not in quiet.output and "dup00-astronaut-x400" in quiet.output  # the table stays


def test_bars_show_images_per_second_and_stage_progress_on_a_terminal():
    stream = io.StringIO()
    tracker = RunProgress(bars=True, stream=stream)
    tracker.start(total=3, done=1)
    tracker.stage("invert", 5, "step")
    for _ in range(7):  # past the planned steps: the stage's total grows
        tracker.advance()
    assert tracker.stage_total == 7
    tracker.finished(2)
    tracker.close()
    drawn = stream.getvalue()
    assert "images" in drawn and "3/3" in drawn and "invert" in drawn and "image/s" in drawn
