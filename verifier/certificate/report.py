"""The run's ``report.html``: rendered by jinja2 with autoescaping, self-contained, for people to look at.

What it shows (issue 11): the counts per verdict and category (and the release gate, under a policy);
a table that sorts and filters by verdict, error ratio, replication rate and similarity; per image the
protected image, its closest generation, every generation per guidance scale with the replicating ones
marked (the run's contact sheet, ``<id>.generations.png``), the per-timestep prediction error under the
witness and under the empty prompt as inline SVG, each condition with its value, threshold and margin,
and the verdict's reason.

Self-contained: every picture is a ``data:`` URI, the script and styles are inline, and the page's
Content-Security-Policy forbids any other source, so opening it makes no request. Every string that
comes from a user (file names, ids, prompts, the model's path) reaches the page through jinja2's
autoescaping, never through the script.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

from verifier.certificate.schema import VERDICTS

CONDITION_NAMES = {"similarity": "similarity (best generation)", "existence": "existence (error ratio)",
                   "probability": "probability (lower bound on the replication rate)"}
CURVE_WIDTH, CURVE_HEIGHT, CURVE_PAD = 320, 150, 34
DISPLAY_TILE = 64  # tiles smaller than this are enlarged (nearest neighbour) on the page


def report_html(folder: Path, summary: dict, certificates: list[dict], image_pngs: dict[str, bytes], title: str) -> str:
    """The report for ``certificates`` (in ``summary``'s order); pictures are read from ``folder``."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(loader=PackageLoader("verifier.certificate", "templates"),
                              autoescape=select_autoescape(default=True, default_for_string=True))
    environment.filters["number"] = _number
    gates = {row["id"]: row["gate"] for row in summary["images"]}
    images = [_image_view(number, certificate, folder, image_pngs.get(certificate["image"]["id"]),
                          gates.get(certificate["image"]["id"]))
              for number, certificate in enumerate(certificates)]
    return environment.get_template("report.html.j2").render(
        title=title, summary=summary, images=images, verdicts=VERDICTS,
        model=_model_label(certificates[0]["model"]) if certificates else "", policy=summary.get("policy"))


def _model_label(model: dict) -> str:
    """The model's source with each adapter on it (a LoRA's file name and scale, an embedding's file name and token),
    as the page's header names it."""
    return model["source"] + "".join(
        f" + LoRA {Path(adapter['path']).name} at scale {adapter['scale']:g}" if adapter["kind"] == "lora" else
        f" + embedding {Path(adapter['path']).name} as {adapter['token']}" for adapter in model["adapters"])


def _image_view(number: int, certificate: dict, folder: Path, png: bytes | None, gate: dict | None) -> dict:
    conditions = certificate["conditions"]
    probability = conditions["probability"]
    best = next(s for s in probability["per_scale"] if s["guidance_scale"] == probability["best_guidance_scale"])
    return {
        "number": number,
        "id": certificate["image"]["id"],
        "path": certificate["image"]["path"],
        "verdict": certificate["verdict"],
        "reason": certificate["verdict_reason"],
        "image": _data_uri(png),
        "closest": _file_uri(folder / certificate["witness"]["closest_generation"]),
        "closest_caption": f"seed {certificate['witness']['closest_seed']}, guidance "
                           f"{certificate['witness']['closest_guidance_scale']:g}",
        "error_ratio": conditions["existence"]["value"],
        "rate": best["rate"],
        "replications": f"{best['replications']}/{best['generations']}",
        "best_scale": best["guidance_scale"],
        "similarity": conditions["similarity"]["value"],
        "metric": conditions["similarity"]["metric"],
        "conditions": [_condition_view(name, conditions[name]) for name in CONDITION_NAMES],
        "sheet": _sheet_view(number, certificate, folder),
        "curve": _curve_view(certificate["prediction_error"]),
        "category": certificate["classification"]["category"],
        "classification_reason": certificate["classification"]["reason"],
        "readable": certificate["readable_prompt"]["statement"],
        "prompts": [_prompt_view(prompt) for prompt in certificate["prompts"] + certificate["readable_prompt"]["prompts"]],
        "gate": gate,
        "part": _part_view(certificate),
        "framing": _framing_view(certificate),
    }


def _framing_view(certificate: dict) -> dict:
    """The framing search's statement and, for its witness, the frame the model reproduces, as percentages of
    the protected image's centred square (drawn over it; a frame reaching past the square is cut at its edge)."""
    framing = certificate["framing"]
    found = framing["closest_framing"]
    box = None
    if found is not None:
        side = 100 * found["scale"]
        top = 50 + 100 * found["shift"][0] * found["scale"] - side / 2
        left = 50 + 100 * found["shift"][1] * found["scale"] - side / 2
        box = {"top": top, "left": left, "side": side, "mirror": found["mirror"]}
    return {"statement": framing["statement"], "box": box}


def _part_view(certificate: dict) -> dict:
    """The part finding and, where one was found, its window as percentages of the image (drawn over it)."""
    part = certificate["part_replication"]
    resolution = certificate["image"]["preprocessing"]["resolution"]
    top, left, side = part["best"]["box"]
    return {"found": part["found"], "statement": part["statement"],
            "box": {"top": 100 * top / resolution, "left": 100 * left / resolution, "side": 100 * side / resolution}}


def _condition_view(name: str, record: dict) -> dict:
    higher = name != "existence" and record.get("direction", "higher is more similar") == "higher is more similar"
    return {"name": CONDITION_NAMES[name], "value": record["value"], "threshold": record["threshold"],
            "margin": record["margin"], "passed": record["pass"], "comparison": "≥" if higher else "≤"}


def _prompt_view(prompt: dict) -> dict:
    best = next(s for s in prompt["per_scale"] if s["guidance_scale"] == prompt["best_guidance_scale"])
    return {"kind": prompt["kind"], "prompt": prompt["prompt"], "error_ratio": prompt["error_ratio"],
            "replications": f"{best['replications']}/{best['generations']}", "scale": best["guidance_scale"],
            "lower_bound": prompt["lower_bound"]}


def _sheet_view(number: int, certificate: dict, folder: Path) -> dict | None:
    """The contact sheet as one data URI and, per scale, each seed's cell: where it sits, its score, whether
    it replicated."""
    record = certificate["witness"]["generations_sheet"]
    uri = _file_uri(folder / record["file"])
    if uri is None:
        return None
    similarity = certificate["conditions"]["similarity"]
    higher = similarity["direction"] == "higher is more similar"
    tile = record["tile"]
    zoom = max(1, math.ceil(DISPLAY_TILE / tile)) if tile < DISPLAY_TILE else 1
    by_scale = {s["guidance_scale"]: s for s in certificate["conditions"]["probability"]["per_scale"]}
    part_hits = _part_hits(certificate["part_replication"])
    scales = certificate["witness"]["guidance_scales"]
    seeds = certificate["witness"]["seeds"]
    columns = max(len(s["scores"]) for s in by_scale.values())
    rows = []
    for row, scale in enumerate(scales):
        scale_record = by_scale.get(scale)
        if scale_record is None:
            continue
        cells = []
        for column, score in enumerate(scale_record["scores"]):
            hit = score is not None and (score >= similarity["threshold"] if higher else score <= similarity["threshold"])
            cells.append({"x": -column * tile * zoom, "y": -row * tile * zoom, "seed": seeds[column],
                          "score": score, "hit": hit, "part": (scale, column) in part_hits})
        rows.append({"scale": scale, "cells": cells, "replications": scale_record["replications"],
                     "generations": scale_record["generations"], "lower": scale_record["lower_bound"],
                     "upper": scale_record["upper_bound"]})
    return {"uri": uri, "size": tile * zoom, "width": columns * tile * zoom, "height": len(scales) * tile * zoom,
            "rows": rows, "metric": similarity["metric"], "threshold": similarity["threshold"],
            "comparison": "≥" if higher else "≤"}


def _part_hits(part: dict) -> set[tuple[float, int]]:
    """(scale, seed index) of every generation whose window holding the found part replicated it, at every scale."""
    if not part["found"]:
        return set()
    window = part["best"]["window"]
    return {(scale_record["guidance_scale"], index) for scale_record in part["per_scale"]
            for index, row in enumerate(scale_record["scores"])
            if row[window] is not None and row[window] >= part["threshold"]}


def _curve_view(error: dict) -> dict:
    """Polylines (SVG coordinates) of the per-timestep error under the witness and under the empty prompt."""
    timesteps = [float(t) for t in error["timesteps"]]
    values = [v for v in error["inverted"] + error["empty"] if v is not None]
    top = max(values) if values else 1.0
    top = top if top > 0 else 1.0
    low, high = min(timesteps), max(timesteps)
    span = high - low or 1.0

    def x(t: float) -> float:
        return round(CURVE_PAD + (t - low) / span * (CURVE_WIDTH - CURVE_PAD - 8), 1)

    def y(v: float) -> float:
        return round(CURVE_HEIGHT - CURVE_PAD + 10 - v / top * (CURVE_HEIGHT - CURVE_PAD - 4), 1)

    def segments(series: list) -> list[str]:
        parts, current = [], []
        for t, v in zip(timesteps, series):
            if v is None:  # a non-finite value breaks the line instead of drawing a fake point
                parts, current = parts + ([" ".join(current)] if current else []), []
            else:
                current.append(f"{x(t)},{y(v)}")
        return parts + ([" ".join(current)] if current else [])

    return {"width": CURVE_WIDTH, "height": CURVE_HEIGHT, "witness": segments(error["inverted"]),
            "empty": segments(error["empty"]), "left": CURVE_PAD, "right": CURVE_WIDTH - 8,
            "bottom": CURVE_HEIGHT - CURVE_PAD + 10, "top_y": y(top), "top": top, "low": low, "high": high,
            "ratio": error["ratio"], "witness_mean": error["inverted_mean"], "empty_mean": error["empty_mean"],
            "inversion_steps": error["inversion_steps"]}


def _number(value: float | None, digits: int = 3) -> str:
    """A recorded number for people; ``None`` (a non-finite measurement) says so instead of a number."""
    return "not finite" if value is None else f"{value:.{digits}f}"


def _data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode()


def _file_uri(path: Path) -> str | None:
    return _data_uri(path.read_bytes()) if path.is_file() else None
