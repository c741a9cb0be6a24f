"""Stage 6: certificates, witnesses, the run summary and the HTML report, all written atomically.

A run's output folder holds, per image, ``<id>.json`` (the certificate), ``<id>.witness.safetensors``
(the inverted conditioning) and ``<id>.closest.png`` (the generation nearest the image); plus
``summary.json`` and ``report.html`` for the whole run. Every file is written to a temporary name
in the same folder and renamed into place, so a killed run leaves either the old file or the new
one, never half of one; a certificate is written last for its image, so its presence means the
image is done.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from verifier.conditions import VERDICTS

SCHEMA = {"id": "verifier.certificate", "version": 1}
SUMMARY_SCHEMA = {"id": "verifier.summary", "version": 1}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: dict) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_witness(path: Path, conditioning, empty, variables, metadata: dict) -> str:
    """Save the witness as safetensors; return its sha256."""
    from safetensors.torch import save

    # clone(): in the hidden_states space the variables *are* the conditioning, and safetensors
    # refuses tensors that share memory.
    data = save({
        "prompt_embeds": conditioning.detach().float().cpu().clone()[None],
        "negative_prompt_embeds": empty.detach().float().cpu().clone(),
        "variables": variables.detach().float().cpu().clone()[None],
    }, metadata={key: json.dumps(value) for key, value in metadata.items()})
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def run_key(model_fingerprint: str, config_values: dict, image_sha256: str) -> str:
    """Identifies what a certificate's numbers depend on: reuse it only when all three match."""
    payload = json.dumps({"model": model_fingerprint, "config": config_values, "image": image_sha256}, sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def load_finished(out: Path, image_id: str, key: str) -> dict | None:
    """The certificate already in ``out`` for this image, if it was made under the same key."""
    path = out / f"{image_id}.json"
    if not path.is_file():
        return None
    try:
        certificate = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # not ours or damaged by hand: redo it
    return certificate if certificate.get("run_key") == key else None


def summary(certificates: list[dict], model: dict, config: dict) -> dict:
    counts = {verdict: 0 for verdict in VERDICTS}
    for certificate in certificates:
        counts[certificate["verdict"]] += 1
    return {
        "schema": SUMMARY_SCHEMA,
        "model": model,
        "config": config,
        "counts": counts,
        "images": [
            {"id": c["image"]["id"], "path": c["image"]["path"], "sha256": c["image"]["sha256"], "verdict": c["verdict"],
             "error_ratio": c["conditions"]["existence"]["value"],
             "replication_rate": c["conditions"]["probability"]["rate"],
             "certificate": f"{c['image']['id']}.json"}
            for c in certificates
        ],
    }


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
            f"<td>{existence['value']:.3f} (&le; {existence['threshold']})</td>"
            f"<td>{_rate(probability)}</td>"
            f"<td>{similarity['value']:.3f} ({html.escape(similarity['metric'])})</td>"
            f"<td><small>{html.escape(c['verdict_reason'])}</small></td>"
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
<th>replications (best scale)</th><th>best similarity</th><th>why</th></tr>
{''.join(rows)}
</table></body></html>
"""


def _rate(probability: dict) -> str:
    best = next(s for s in probability["per_scale"] if s["guidance_scale"] == probability["best_guidance_scale"])
    return f"{best['replications']}/{best['generations']} at guidance {best['guidance_scale']:g}"
