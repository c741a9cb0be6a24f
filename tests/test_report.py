"""The report in a real browser (issue 11): Debian's Chromium, driven headless by playwright.

A run on the fixture model whose file names and owner prompt are hostile (markup, quotes, an event
handler, a closing script tag) is rendered and opened from disk. The page must make no request, log no
console error, run no injected script, show every hostile string as text, mark exactly the replicating
generations, sort and filter, fit a phone's width and print without its controls. A full-page
screenshot is written to ``VERIFIER_SCREENSHOT_DIR`` when that is set (to look at it).

Without a Chromium the test is skipped, unless ``VERIFIER_REQUIRE_BROWSER=1`` (set by ``.ci/run``,
which installs Debian's ``chromium``): then a missing browser fails.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from verifier.config import VerifierConfig
from verifier.reference_models import reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FIXTURE = reference_model_path("fixture-16px")
HOSTILE_NAMES = {
    # file names cannot hold "/", so no closing tags here; the owner prompt below has one
    "dup00-astronaut-x400": "<img src=x onerror=window.__pwned=1> astronaut",
    "held-flower-whole": "\" onmouseover=\"window.__pwned=2\" 'flower' & <b>bold",
}
HOSTILE_PROMPT = "</script><script>window.__pwned=3</script> an astronaut"


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    if executable is None:
        if os.environ.get("VERIFIER_REQUIRE_BROWSER") == "1":
            pytest.fail("VERIFIER_REQUIRE_BROWSER=1 but no chromium on PATH (Debian: apt-get install chromium)")
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from verifier.api import certify

    root = tmp_path_factory.mktemp("report")
    images = root / "images"
    images.mkdir()
    for source, hostile in HOSTILE_NAMES.items():
        shutil.copy(FIXTURE / "images" / f"{source}.png", images / f"{hostile}.png")
    manifest = root / "list.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in [
        {"path": str(images / f"{HOSTILE_NAMES['dup00-astronaut-x400']}.png"), "entity": "<i>Eileen</i>",
         "explicit_prompts": [HOSTILE_PROMPT]},
        {"path": str(images / f"{HOSTILE_NAMES['held-flower-whole']}.png")},
    ]) + "\n")
    out = root / "certs"
    certify(FIXTURE, [manifest], out, VerifierConfig(device="cpu", inversion_steps=30, framing_steps=30, generations=8))
    return out


@pytest.fixture
def page(browser, run):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.problems = []
    opened.on("console", lambda message: opened.problems.append(f"console {message.type}: {message.text}")
              if message.type in ("error", "warning") else None)
    opened.on("pageerror", lambda error: opened.problems.append(f"page error: {error}"))
    report = (run / "report.html").resolve().as_uri()
    opened.on("request", lambda request: opened.problems.append(f"request: {request.url}")
              if not request.url.startswith("data:") and request.url != report else None)
    opened.goto(report)
    yield opened
    context.close()


def certificates(run: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(run.glob("*.json"))
            if path.name not in ("summary.json", "run.json")]


def test_the_report_is_self_contained_quiet_and_escapes_every_user_string(page, run):
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.scripts.length") == 1  # the report's own script, nothing injected
    text = page.inner_text("body")
    for hostile in HOSTILE_NAMES.values():
        assert f"{hostile}.png" in text  # the recorded path, shown as text
    assert HOSTILE_PROMPT in text and "<b>" not in page.inner_html("main").replace("&lt;b&gt;", "")
    assert page.evaluate("document.querySelectorAll('main b, main i, img[src=x]').length") == 0
    page.hover("table#images tbody tr:nth-child(2)")
    assert page.evaluate("window.__pwned") is None
    assert page.problems == [], page.problems
    if os.environ.get("VERIFIER_SCREENSHOT_DIR"):
        folder = Path(os.environ["VERIFIER_SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / "report-desktop.png"), full_page=True)


def test_the_report_shows_counts_tiles_and_curves_from_the_certificates(page, run):
    written = certificates(run)
    summary = json.loads((run / "summary.json").read_text())
    for verdict, count in summary["counts"].items():
        assert page.inner_text(f"ul.counts li.{verdict} strong") == str(count)
    for certificate in written:
        section = page.locator("section.image").filter(has_text=certificate["verdict_reason"]).first
        per_scale = certificate["conditions"]["probability"]["per_scale"]
        assert section.locator(".tile").count() == sum(s["generations"] for s in per_scale)
        assert section.locator(".tile.hit").count() == sum(s["replications"] for s in per_scale)
        polylines = section.locator("svg.curve polyline")
        assert polylines.count() >= 2  # witness and empty prompt
        for condition in ("existence", "probability", "similarity"):
            threshold = certificate["conditions"][condition]["threshold"]
            assert f"{threshold:.3f}" in section.inner_text()


def test_the_table_sorts_and_filters(page, run):
    def ratios():
        return page.evaluate("Array.from(document.querySelectorAll('#images tbody tr'))"
                             ".filter(r => !r.hidden).map(r => parseFloat(r.dataset.ratio))")

    page.click("th button[data-key='ratio']")
    assert ratios() == sorted(ratios())
    page.click("th button[data-key='ratio']")
    assert ratios() == sorted(ratios(), reverse=True)
    verdicts = page.evaluate("Array.from(document.querySelectorAll('#images tbody tr')).map(r => r.dataset.verdict)")
    page.uncheck(f".verdict-filter[value='{verdicts[0]}']")
    visible = page.evaluate("Array.from(document.querySelectorAll('#images tbody tr'))"
                            ".filter(r => !r.hidden).map(r => r.dataset.verdict)")
    assert verdicts[0] not in visible and len(visible) == sum(v != verdicts[0] for v in verdicts)
    assert page.locator(f"section.image[data-verdict='{verdicts[0]}']").first.is_hidden()
    page.check(f".verdict-filter[value='{verdicts[0]}']")
    rates = page.evaluate("Array.from(document.querySelectorAll('#images tbody tr')).map(r => parseFloat(r.dataset.rate))")
    page.fill("#min-rate", "0.5")
    shown = page.evaluate("Array.from(document.querySelectorAll('#images tbody tr'))"
                          ".filter(r => !r.hidden).map(r => parseFloat(r.dataset.rate))")
    assert sorted(shown) == sorted(rate for rate in rates if rate >= 0.5) and len(shown) < len(rates)
    page.fill("#min-rate", "")
    page.fill("#max-ratio", "0.6")
    assert all(value <= 0.6 for value in ratios())
    assert page.problems == [], page.problems


def test_the_report_fits_a_phone_and_prints_without_controls(page, run):
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    if os.environ.get("VERIFIER_SCREENSHOT_DIR"):
        page.screenshot(path=str(Path(os.environ["VERIFIER_SCREENSHOT_DIR"]) / "report-phone.png"), full_page=True)
    page.emulate_media(media="print")
    assert page.locator(".controls").is_hidden()
    assert len(page.pdf()) > 1000
    assert page.problems == [], page.problems
