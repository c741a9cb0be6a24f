"""Stage 5f-i: where the owner's copy sits, screened over candidate framings before the framing search inverts.

The framing search inverts at the noisiest levels only, where an owner's copy framed a little unlike the
training crop still points to the memorized conditioning; but only so far: on the reference models a copy
moved by 15% of its side is out of reach of an inversion at the owner's framing, while one at a framing
within about 5% of the trained one regenerates the memorized image (docs/owner-copies.md, "Candidate
framings"). So the framing search inverts the owner's image where a cheap screen says the model knows it:

1. cut the owner's image at every **candidate framing**: the frame's centre moved by multiples of
   ``STEP`` of its side, up to the bounds' ``max_shift`` both ways, at scale 1 (25 framings) and, with
   ``framing_scales`` (the default), at the bounds' smallest and largest scale too (a copy framed wider or
   tighter than the training crop: 0.8 and 1.25); twice as many with ``framing_mirror``, each also mirrored;
   where the owner's pixels cover at least the bounds' ``min_overlap``; the strip a moved frame leaves uncovered is
   edge-filled and counts nowhere (``alignment.Cut``);
2. invert every cut as the framing search inverts (the noisiest levels, ``noise_floor``, all of
   ``framing_steps``), every candidate of an image with the same random stream (common random numbers:
   the candidates differ only in their pixels);
3. **screen** each: its error under its witness over the empty prompt's, at ``DRAWS`` fixed draws at those
   noise levels (the same draws for every candidate and both conditionings), owner's pixels only;
4. the lowest is the framing the framing search searches, and its inversion is the framing search's witness.

Every candidate is inverted to the end: an inversion that finds a weakly memorized image often finds it
only in the last third of its steps (its ratio in the middle of the pack until then), so dropping
candidates on an early screen (successive halving, until 2026-12-07) lost exactly those images
(docs/owner-copies.md, "Every candidate to the end").

``chosen`` is the rule of step 4 on recorded ratios, which ``verify`` replays. A NaN ratio ranks last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from verifier.alignment import Framing, FramingBounds, OwnerImage, latent_weights
from verifier.error import ERROR_ROWS_PER_CALL, denoising_error, prediction_error
from verifier.invert import Inversion, InversionSchedule, InversionSearch, image_generator
from verifier.models.base import Conditioning, ModelAdapter

STEP = 0.1  # candidate framings' centres lie on this grid (fractions of the frame's side)
DRAWS = 8  # (timestep, noise) draws the screen measures each candidate's error on
ENCODE_CHUNK = 4  # cuts per VAE call: 25 per image at once would hold a 1024-px VAE's activations 25 times
METHOD = (f"the owner's image cut at every framing whose centre lies on a {STEP:g}-of-the-side grid within the "
          "shift bounds (at scale 1, and at the bounds' smallest and largest scale where framing_scales is on), each "
          "cut inverted at the framing search's noise levels with the same random stream for all of its steps and "
          f"screened (witness / empty prompt error at {DRAWS} fixed draws at those noise levels, owner's pixels "
          "only); the lowest is the framing searched")


def candidate_framings(bounds: FramingBounds, side: int, mirror: bool = False, scales: bool = False) -> list[Framing]:
    """The candidate framings of step 1, shifts in pixels of a ``side``-pixel search (as ``Framing`` keeps them);
    with ``scales`` (config ``framing_scales``) at the bounds' smallest and largest scale too (a copy framed wider
    or tighter than the trained crop), with ``mirror`` (config ``framing_mirror``) each also mirrored left-right."""
    reach = int(math.floor(bounds.max_shift / STEP + 1e-9))
    offsets = [k * STEP * side for k in range(-reach, reach + 1)]
    sizes = (1 / bounds.max_scale, 1.0, bounds.max_scale) if scales else (1.0,)
    return [Framing(size, dy, dx, mirrored) for mirrored in ((False, True) if mirror else (False,))
            for size in sizes for dy in offsets for dx in offsets]


def _rank_key(ratio: float | None) -> float:
    return math.inf if ratio is None or not math.isfinite(ratio) else ratio


def chosen(candidates: list[dict]) -> int:
    """Index of the framing searched: the lowest screen ratio, ties to the earlier."""
    return min(range(len(candidates)), key=lambda i: (_rank_key(candidates[i]["ratio"]), i))


@dataclass
class Screened:
    """The framing search's input for a batch of owners' images: the cuts it searches and their inversion."""

    z0: torch.Tensor  # the chosen cuts' latents
    weights: torch.Tensor  # the latent cells each cut's errors count
    empty_errors: torch.Tensor  # (B, timesteps) the cuts' grid errors under the empty prompt
    inversion: Inversion  # the chosen candidates' inversion: the framing search's witnesses
    records: list[dict]  # per image: the certificate's ``screen`` block


def screen(model: ModelAdapter, space, owners: list[OwnerImage], streams: list[str], *, empty: Conditioning,
           config, noise_floor: float, resolution: int, on_step: Callable[[], None] | None = None) -> Screened:
    """Steps 1-4 for a batch of owners' images; ``streams`` names each image's random streams; ``on_step`` is
    called after every Adam step of the batch (``framing_steps`` in all: progress)."""
    side = owners[0].side
    framings, cuts, owner_of = [], [], []
    for index, owner in enumerate(owners):
        for framing in candidate_framings(owner.bounds, side, config.framing_mirror, config.framing_scales):
            cut = owner.cut(framing, resolution)
            if cut is not None and cut.coverage >= owner.bounds.min_overlap - 1e-9:
                framings.append(framing)
                cuts.append(cut)
                owner_of.append(index)
    z0 = torch.cat([model.encode_images([cut.pixels for cut in cuts[first:first + ENCODE_CHUNK]])
                    for first in range(0, len(cuts), ENCODE_CHUNK)])
    weights = latent_weights(cuts, z0)
    # 2. Every candidate of an image with the image's stream: one generator per row, seeded alike.
    generators = [image_generator(config.seed, streams[index], "inversion") for index in owner_of]
    search = InversionSearch(model, space, z0, generators, config.inversion_learning_rate,
                             config.inversion_noise_draws, noise_floor, weights)
    draws = [_screen_draws(model, z0, streams[index], config.seed, noise_floor) for index in range(len(owners))]

    @torch.no_grad()
    def errors(conditioning: Conditioning, rows: list[int]) -> list[float]:
        """Each row's mean error at its image's draws, rows (candidate, draw) in calls of at most ``chunk``."""
        index = torch.tensor(rows, device=z0.device).repeat_interleave(DRAWS)
        timesteps = torch.cat([draws[owner_of[row]][0] for row in rows])
        noise = torch.cat([draws[owner_of[row]][1] for row in rows])
        repeated = conditioning.repeat_interleave(DRAWS)
        chunk = min(ERROR_ROWS_PER_CALL, model.rows_per_call or ERROR_ROWS_PER_CALL)
        measured = torch.cat([
            denoising_error(model, z0[index[i:i + chunk]], noise[i:i + chunk], timesteps[i:i + chunk],
                            repeated.select(list(range(i, min(i + chunk, len(index))))), weights[index[i:i + chunk]])
            for i in range(0, len(index), chunk)])
        return measured.view(len(rows), DRAWS).mean(dim=1).tolist()

    every = list(range(len(cuts)))
    rows_of = [[row for row in every if owner_of[row] == index] for index in range(len(owners))]
    baseline = errors(empty.expand(len(cuts)), every)
    # 2-3. Invert every candidate for all of its steps, then screen it.
    schedule = InversionSchedule.of(config, fixed=True)
    curves = search.run(schedule.steps, on_step)
    ratios = [_finite(value / baseline[row]) for row, value in enumerate(errors(search.witness(), every))]
    records = [[{**framings[row].record(side), "ratio": ratios[row]} for row in rows] for rows in rows_of]
    # 4. Each image's lowest is the framing searched.
    picks = [rows[chosen(records[index])] for index, rows in enumerate(rows_of)]
    search.keep(picks)
    empty_errors = prediction_error(model, z0[picks], empty.expand(len(picks)), timesteps=config.error_timesteps,
                                    noise_draws=config.error_noise_draws, weights=weights[picks])
    grid = search.grid_errors(schedule)
    with torch.no_grad():
        conditioning = search.witness()
    inversion = Inversion(
        variables={name: value.detach() for name, value in search.variables.items()}, conditioning=conditioning,
        errors=grid, loss_curves=[curves[row] for row in picks],
        checks=[[(schedule.steps, float(grid[position].mean() / empty_errors[position].mean()))]
                for position in range(len(picks))])
    return Screened(z0=z0[picks],
                    weights=weights[picks], empty_errors=empty_errors, inversion=inversion,
                    records=[{"method": METHOD, "steps": schedule.steps, "draws": DRAWS,
                              "candidates": records[index], "chosen": framings[row].record(side)}
                             for index, row in enumerate(picks)])


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _screen_draws(model: ModelAdapter, z0: torch.Tensor, stream: str, seed: int,
                  noise_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (timestep, noise) draws an image's candidates are screened at."""
    generator = image_generator(seed, stream, "screen")
    timesteps = model.objective.sample_timesteps(generator, DRAWS, noise_floor).to(z0.device)
    noise = torch.randn((DRAWS, *z0.shape[1:]), generator=generator).to(z0.device)
    return timesteps, noise


def screen_cost(record: dict, inversion_noise_draws: int) -> dict:
    """The screen's denoiser evaluations beyond the chosen candidate's own inversion, from its record: every other
    candidate's inversion steps, and the screen's forwards (under its witness and under the empty prompt)."""
    count, steps = len(record["candidates"]), record["steps"]
    forward_backward = (count - 1) * steps * inversion_noise_draws
    forward = 2 * count * record["draws"]
    return {"inversion_forward_backward": forward_backward, "screen_forward": forward,
            "total": forward_backward + forward}


def screen_record(record: dict, control) -> dict:
    """The certificate's ``framing.screen``: the image's screen and, where the framing search's control ran, its
    twin's (candidates and chosen framing; the same method)."""
    twin = None if control is None or control.screen is None else \
        {key: control.screen[key] for key in ("candidates", "chosen")}
    return record | {"twin": twin}
