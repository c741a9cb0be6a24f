"""The run's self-contained ``report.html``: one row per image, every user string escaped."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def report_html(out: Path, certificates: list[dict], image_pngs: dict[str, bytes], title: str) -> str:
    """Self-contained HTML: one row per image with the image, its closest generation and key figures."""
    rows = []
    for c in certificates:
        image_id = c["image"]["id"]
        target = "data:image/png;base64," + base64.b64encode(image_pngs[image_id]).decode() if image_id in image_pngs else ""
        closest_path = out / c["witness"]["closest_generation"]
        closest = _data_uri(closest_path) if closest_path.is_file() else ""
        existence, probability, similarity = (c["conditions"][k] for k in ("existence", "probability", "similarity"))
        rows.append(
            "<tr>"
            f"<td><img src=\"{target}\" alt=\"image\"></td><td><img src=\"{closest}\" alt=\"closest generation\"></td>"
            f"<td>{html.escape(image_id)}<br><small>{html.escape(str(c['image']['path']))}</small></td>"
            f"<td class=\"{html.escape(c['verdict'])}\">{html.escape(c['verdict'])}</td>"
            f"<td>{_number(existence['value'])} (&le; {existence['threshold']})"
            f"<br><small>after {c['prediction_error']['inversion_steps']} inversion steps</small></td>"
            f"<td>{_rate(probability)}</td>"
            f"<td>{_number(similarity['value'])} ({html.escape(similarity['metric'])})</td>"
            f"<td><small>{html.escape(c['verdict_reason'])}</small></td>"
            f"<td>{html.escape(c['classification']['category'] or '-')}"
            f"<br><small>{html.escape(c['classification']['reason'])}</small>"
            f"<br><small>readable prompt: {html.escape(c['readable_prompt']['statement'])}</small></td>"
            "</tr>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: middle; }}
img {{ width: 96px; height: 96px; image-rendering: pixelated; }}
.memorized {{ background: #f8c6c6; }} .rarely_reproduced {{ background: #fbe3b5; }}
.inconclusive {{ background: #e6e6e6; }} .not_memorized {{ background: #cdeccd; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table><tr><th>image</th><th>closest generation</th><th>id</th><th>verdict</th><th>error ratio</th>
<th>replications (best scale)</th><th>best similarity</th><th>why</th><th>category and readable evidence</th></tr>
{''.join(rows)}
</table></body></html>
"""


def _rate(probability: dict) -> str:
    best = next(s for s in probability["per_scale"] if s["guidance_scale"] == probability["best_guidance_scale"])
    return f"{best['replications']}/{best['generations']} at guidance {best['guidance_scale']:g}"


def _number(value: float | None) -> str:
    return "not finite" if value is None else f"{value:.3f}"
