"""Stage 5f: the framing search, for owners' copies that are framed unlike the training copy.

A model that memorized its training crop reproduces that crop, at that framing, and on the reference
models that memorization is pixel-exact: the true caption's prediction error on the same photograph
moved by one model pixel (3% of the side) is already worse than the empty prompt's (docs/owner-copies.md).
Inversion on an owner's copy framed 8% wider or moved by 8% therefore finds nothing at low noise levels,
and the first search certifies ``not_memorized`` a photograph the model reproduces in every seed.

At high noise levels only the coarse layout matters, and there an owner's reframed copy still points
the inversion to the memorized conditioning. So, for every image whose first search (stages 4-5c, at
the owner's framing, every noise level) reproduced nothing:

1. invert the owner's image again, drawing training timesteps only from the noisiest
   ``1 - NOISE_FLOOR`` of the schedule, a fixed ``framing_steps`` Adam steps, cut where a screen over
   candidate framings (the centre moved on a grid within ``BOUNDS``) says the model knows it best
   (``verifier.screen``): even at those noise levels, a copy moved by 15% of its side is out of reach of an
   inversion at the owner's framing;
2. generate from that witness as from any witness (every guidance scale, the same seeds and looks)
   and score each generation against the owner's image **framed best for it** within ``BOUNDS``
   (``verifier.alignment``: scale up to 1.25x either way, the centre moved up to 20% of the side,
   mirrored or not);
3. where it replicates but the error ratio stays above the existence threshold (as it does: the
   ratio is measured at the owner's framing, every noise level), the never-seen twin goes through the
   same search (screened over the same candidates, inverted at the same noise levels, scored with the
   same framing search), so an image
   that any conditioning draws, or that the framing search flatters, is not called memorized;
4. decide as for the first witness (``conditions.decide``). Where this search reproduces the image,
   its witness, numbers and verdict are the certificate's; otherwise the first search's stand, and
   the certificate says the framing search ran and found nothing.

**Between the grid's framings** (the aligned search, with the framing search): where the framing
search replicated nothing, their witness's closest generation still points near the memorized image,
blurred, and the grid framing it matches is right to the grid's step; the model, though, memorized its
crop to the pixel. So:

5. refine the framing of that closest generation to a fraction of a pixel (``alignment.refine``,
   within ``BOUNDS``), cut the owner's image there (``OwnerImage.cut``) and search the cut as the first
   search searches an owner's image: every noise level, its own latent, empty-prompt error and random
   streams, scored with the run's metric against the cut, its never-seen twin the cut upside down.
   Where the frame reaches past the owner's image, the cut's uncovered strip is filled with the edge's
   pixels, but nothing counts it: the errors (inversion's loss, its checks, the empty prompt's, the
   twin's) count the latent cells wholly on the owner's pixels and similarity compares those pixels
   only (``alignment.Cut``), so a witness cannot win by drawing the filler.
   Its witness stands where it replicates, and also where its own verdict does not clear the image (an
   error ratio under the existence threshold with no replication: ``inconclusive``): a whole search of
   the owner's pixels at the framing the model points to outranks the owner's framing's clean verdict.
   The certificate records the framing (``aligned_framing``).

**Mirrored copies** (``framing_mirror``, off by default): the comparison searches mirrored framings, but
the coarse inversion of a mirrored copy seldom finds the memorized conditioning. With the option on, the
screen (step 1) also tries every candidate framing mirrored left-right, so the framing search inverts the
owner's image mirrored where the screen says the model knows it so. Cost: 25 more candidates in the screen
(docs/owner-copies.md).
"""

from __future__ import annotations

from verifier.alignment import FramingBounds
from verifier.taxonomy import REPRODUCED_VERDICTS

ALIGNED_SEARCH = "aligned search"
NOISE_FLOOR = 0.8  # the framing search's inversion draws t >= 0.8 x the schedule (DDPM) / the noisiest 20% (flow)
BOUNDS = FramingBounds()
METHOD = (f"inversion at the noisiest {1 - NOISE_FLOOR:.0%} of the training schedule of the owner's image cut at the "
          "candidate framing a screen chose (verifier.screen), then each generation scored "
          "against the owner's image framed best for it (SSIM search over the framings in bounds, the metric on "
          "the overlap); the never-seen twin through the same search where the control decides existence; where "
          "nothing replicated, the aligned search: the owner's image cut at the closest generation's framing, "
          "refined to a fraction of a pixel, searched at every noise level with its own twin, errors and similarity "
          "counting only the owner's pixels in the cut")


def bounds_record() -> dict:
    return {"scale": [round(1 / BOUNDS.max_scale, 6), BOUNDS.max_scale], "scale_steps": BOUNDS.scale_steps,
            "max_shift": BOUNDS.max_shift, "mirror": BOUNDS.mirror, "min_overlap": BOUNDS.min_overlap}


def reproduced_nothing(verdict: str, replications: int) -> bool:
    """The first search found no replication at all: the only case the framing search runs for."""
    return verdict not in REPRODUCED_VERDICTS and replications == 0


def framing_witness_stands(replications: int) -> bool:
    """A framing search's witness (plain or mirrored) replaces the one before it where it replicated the image."""
    return replications > 0


def aligned_witness_stands(aligned: dict) -> bool:
    """The aligned search's witness replaces the first search's where it replicated the image, or where its own
    verdict does not clear the image: it is a whole search (every noise level, its own twin) of the owner's
    pixels at the framing the model points to, so an error ratio under the existence threshold there (or a
    broken measurement) is ``inconclusive`` at worst, never cleared by the owner's framing."""
    return aligned["replications"] > 0 or aligned["verdict"] != "not_memorized"


def witness_search(framed: dict | None, aligned: dict | None = None) -> str:
    """Which search the certificate's witness comes from: the first, in the order they run, whose witness stands
    (``framing_witness_stands``, ``aligned_witness_stands``) after the search at the owner's framing replicated
    nothing; else that one's."""
    if framed is not None and framing_witness_stands(framed["replications"]):
        return "framing search"
    if aligned is not None and aligned_witness_stands(aligned):
        return ALIGNED_SEARCH
    return "owner's framing"


def aligned_search_runs(framed: dict | None) -> bool:
    """The aligned search runs where the framing search ran and replicated nothing."""
    return framed is not None and witness_search(framed) == "owner's framing"


def witness_is_framed(witness: str) -> bool:
    """The framing search's witness: fixed-budget inversion, scored against the owner's image framed best."""
    return witness == "framing search"


def search_summary(decision, ratio: float | None) -> dict:
    return {"verdict": decision.verdict, "error_ratio": ratio,
            "replications": decision.conditions["similarity"]["replications"],
            "generations": decision.conditions["similarity"]["generations"]}


def framing_record(*, searched: bool, enabled: bool, mirror_enabled: bool, scales_enabled: bool, first: dict,
                   framed: dict | None, aligned: dict | None, aligned_framing: dict | None, closest_framing: dict | None,
                   evaluations: dict | None, aligned_evaluations: dict | None, screen: dict | None = None) -> dict:
    """The certificate's ``framing`` block: whether each search ran, what each found, which is the witness."""
    witness = witness_search(framed, aligned)
    if not enabled:
        statement = "the framing search is off (framing_search = false): only the owner's framing was searched"
    elif not searched:
        statement = "not needed: the witness found at the owner's framing replicated the image"
    elif witness == ALIGNED_SEARCH and aligned["replications"] == 0:
        statement = (f"the witness at the owner's framing replicated nothing ({first['verdict']}), nor did the framing "
                     f"search; the aligned search (the owner's image cut at scale {aligned_framing['scale']:.3g}, "
                     f"shifted by ({aligned_framing['shift'][0]:+.3g}, {aligned_framing['shift'][1]:+.3g}) of the side"
                     f"{', mirrored' if aligned_framing['mirror'] else ''}, searched at every noise level) replicated "
                     f"nothing either, but its verdict there is {aligned['verdict']} (error ratio "
                     + ("n/a" if aligned["error_ratio"] is None else f"{aligned['error_ratio']:.3f}")
                     + "), so the image is not cleared: its witness is the certificate's")
    elif witness != "owner's framing":
        statement = (f"the witness at the owner's framing replicated nothing ({first['verdict']}); the {witness}'s "
                     + ("(the owner's image cut at the framing the framing search's closest generation matches, "
                        "refined to a fraction of a pixel, and searched at every noise level) "
                        if witness == ALIGNED_SEARCH else "")
                     + f"witness reproduces the image framed at scale {closest_framing['scale']:.3g}, shifted by "
                     f"({closest_framing['shift'][0]:+.3g}, {closest_framing['shift'][1]:+.3g}) of the side"
                     f"{', mirrored' if closest_framing['mirror'] else ''} in its closest generation")
    else:
        statement = (f"the framing search also reproduced nothing ({framed['replications']} replications of "
                     f"{framed['generations']} generations, {framed['verdict']})"
                     + ("" if mirror_enabled else " (mirrored framings are not screened: framing_mirror = false)")
                     + ("" if scales_enabled else " (only scale 1 is screened: framing_scales = false)")
                     + (f", nor did the aligned search ({aligned['replications']} of {aligned['generations']}, "
                        f"{aligned['verdict']})" if aligned is not None else "")
                     + ": no framing within the bounds was reproduced")
    return {"method": METHOD, "noise_floor": NOISE_FLOOR, "bounds": bounds_record(), "enabled": enabled,
            "mirror_enabled": mirror_enabled, "scales_enabled": scales_enabled, "searched": searched,
            "witness": witness, "first_search": first, "screen": screen, "framing_search": framed, "aligned_search": aligned,
            "aligned_framing": aligned_framing, "closest_framing": closest_framing,
            "denoiser_evaluations": evaluations, "aligned_denoiser_evaluations": aligned_evaluations, "statement": statement}
