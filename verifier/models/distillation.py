"""Few-step distilled models (Turbo, Schnell, LCM, TCD): detect them and say what a verdict on them covers.

Distillation trains a student to jump to the data in one to a few steps; per-image memorization of
the teacher has been reported to vanish by construction in the student (arXiv 2502.02970), and the
student is no longer trained on the denoising objective the prediction error is measured in. So a
verdict on a distilled model is a statement about **that student, sampled as the run sampled it**:
replications it produced are real evidence (a ``memorized`` verdict stands), but the error ratio is
measured in an objective the student was not last trained on, and a ``not_memorized`` verdict says
nothing about the teacher it was distilled from. The certificate records the evidence found and this
scope.

Evidence read from the loaded pipeline (configs only, nothing executed):

- a consistency-model scheduler (``LCMScheduler``, ``TCDScheduler``);
- a denoiser with a guidance-embedding input but no classifier-free guidance at sampling
  (``time_cond_proj_dim``, LCM-distilled UNets);
- a Flux transformer without the guidance embedding (``guidance_embeds = False``: Flux schnell, the
  timestep-distilled model);
- an Euler-ancestral scheduler with ``trailing`` spacing (SD-Turbo and SDXL-Turbo ship it);
- the model's name (``turbo``, ``schnell``, ``lcm``, ``lightning``, ``hyper``, ``tcd``): weaker evidence,
  recorded as such. SD 3.5 Large Turbo ships a config identical to its teacher's, so only its name tells.
"""

from __future__ import annotations

import re

NAME_HINTS = ("turbo", "schnell", "lcm", "lightning", "hyper", "tcd")
CONSISTENCY_SCHEDULERS = ("LCMScheduler", "TCDScheduler")


def few_step_evidence(pipeline, source: str) -> list[str]:
    """Every sign in the pipeline's configs (and the model's name) that it is a few-step distilled model."""
    evidence = []
    scheduler = type(pipeline.scheduler).__name__
    if scheduler in CONSISTENCY_SCHEDULERS:
        evidence.append(f"scheduler {scheduler} (consistency distillation)")
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    config = getattr(denoiser, "config", {})
    if config.get("time_cond_proj_dim") is not None:
        evidence.append(f"denoiser time_cond_proj_dim={config['time_cond_proj_dim']} (LCM guidance embedding)")
    if type(pipeline).__name__ == "FluxPipeline" and not config.get("guidance_embeds", True):
        evidence.append("Flux transformer without guidance_embeds (timestep-distilled, as Flux schnell)")
    if scheduler == "EulerAncestralDiscreteScheduler" and pipeline.scheduler.config.get("timestep_spacing") == "trailing":
        evidence.append("EulerAncestralDiscreteScheduler with trailing spacing (as SD-Turbo and SDXL-Turbo ship)")
    words = set(re.split(r"[^a-z0-9]+", source.lower()))
    named = [hint for hint in NAME_HINTS if hint in words]
    if named:
        evidence.append(f"the model's name contains {', '.join(repr(n) for n in named)} (name only: weaker evidence)")
    return evidence


def distillation_record(pipeline, source: str) -> dict:
    """What a certificate says about distillation: the evidence and, where there is any, the verdict's scope."""
    evidence = few_step_evidence(pipeline, source)
    if not evidence:
        return {"few_step": False, "evidence": [], "scope": "a model trained on the denoising objective"}
    return {"few_step": True, "evidence": evidence, "scope": (
        "a few-step distilled model: the verdict covers this student as sampled here (the recorded steps and "
        "guidance scales). Replications are evidence as for any model. The error ratio is measured in the "
        "denoising objective, which the student was not last trained on, and per-image memorization of the "
        "teacher can vanish under distillation (arXiv 2502.02970): not_memorized says nothing about the teacher, "
        "and a student that replicates only at its native steps may need them (set sampling_steps).")}
