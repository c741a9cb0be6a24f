"""InvMM's published schedule as a baseline, run beside verifier on the same images in the same run.

    python benchmarks/invmm_baseline.py [--model NAME ...] [--memorized K] [--never-trained K]
        [--max-steps 2000] [--check-every 50] [--threads N] [--save FILE] [--replay FILE ...]

The baseline is written here from InvMM's published description (``../shared/method.md`` section 5;
Ma et al., arXiv 2405.05846 and its ICCV 2025 version), not copied:

1. **Free variables**: at each of P soft-token positions (75, or as many as the tokenizers hold
   between BOS and EOS) a distribution over the whole vocabulary (logits starting at 0), relaxed
   with Gumbel-softmax at temperature 2, whose expected embedding is written into the empty
   prompt's token embeddings and passed through the frozen text encoders (every encoder the family
   has, each over its own vocabulary); plus the mean and log-variance of the initial-noise
   distribution, both starting at 0 (N(0, I)).
2. **Loss**: the x0-form error (the clean latent the model's output implies, against the VAE
   latent), 16 noise draws per step from the learned noise distribution, one training timestep per
   draw, plus ``lambda x KL(noise distribution || N(0, I))``; lambda starts at 1, grows by 1e-3 a
   step and halves at a check where the loss's mean over the last 100 steps fell by less than 1e-3
   since the previous check. Adam, learning rate 0.1.
3. **Success check every 50 steps**: 8 initial noises from the learned distribution, one
   Gumbel-softmax draw of the prompt, DDIM with 50 steps (the model's own flow-matching sampler for
   flow families), guidance 1, 2, ..., 7; success when the *least* similar of the 8 generations is
   at or past the similarity threshold at some scale.
4. **Score**: the KL of the noise distribution at success (low = memorized), infinity when the
   budget (2,000 steps) ends without success. Verdict: memorized on success, else not memorized.

Similarity: InvMM uses SSCD cosine >= 0.5; SSCD's weights are not shipped here, so both methods use
the run's metric and threshold (the reference models' SSIM >= 0.7), which keeps the comparison on
equal terms. Denoiser evaluations are counted as verifier counts its own: forward+backward passes
of inversion, forward passes of sampling (two per step where classifier-free guidance runs,
guidance above 1). Verifier runs with its defaults on the same images, in the same process, before
the baseline. One run; wall times are this machine's. A baseline image that is never reproduced
costs hours on a CPU, so ``--save`` keeps each result as it is measured and ``--replay`` reports
saved results beside a fresh verifier run on the same images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GUIDANCE_SCALES = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)


@dataclass(frozen=True)
class Schedule:
    """InvMM's published settings (method.md section 5)."""

    positions: int = 75
    temperature: float = 2.0
    learning_rate: float = 0.1
    draws: int = 16
    max_steps: int = 2000
    check_every: int = 50
    check_noises: int = 8
    sampling_steps: int = 50
    guidance_scales: tuple[float, ...] = GUIDANCE_SCALES
    initial_kl_weight: float = 1.0
    kl_weight_step: float = 1e-3
    plateau: float = 1e-3
    loss_window: int = 100

    def check_forward(self) -> int:
        """Denoiser forward passes of one success check."""
        return sum(self.check_noises * self.sampling_steps * (2 if scale > 1 else 1) for scale in self.guidance_scales)


@dataclass
class BaselineResult:
    success: bool
    steps: int
    checks: int
    score: float  # KL of the noise distribution at success; inf without one
    least_similar: float  # the best scale's least similar generation at the last check
    forward_backward: int
    forward: int
    seconds: float


def _gumbel_softmax(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Relaxed one-hot draws (Jang et al.), with noise from ``generator`` so runs repeat."""
    uniform = torch.rand(logits.shape, generator=generator).clamp(1e-10, 1 - 1e-10).to(logits.device)
    return torch.softmax((logits - torch.log(-torch.log(uniform))) / temperature, dim=-1)


def _kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)), averaged over the latent's entries."""
    return 0.5 * (mean.pow(2) + log_variance.exp() - log_variance - 1).mean()


def _positions(adapter, wanted: int) -> int:
    """InvMM's 75 positions, or as many as every tokenizer holds between BOS and EOS."""
    room = min(adapter.sequence_length(name) - adapter.soft_token_offset(name) - 1 for name in adapter.text_inputs())
    return min(wanted, room)


class InvMMBaseline:
    """One image at a time, as InvMM's code runs."""

    def __init__(self, adapter, metric, threshold: float, schedule: Schedule = Schedule(), seed: int = 0):
        from diffusers import DDIMScheduler

        self.adapter, self.metric, self.threshold, self.schedule, self.seed = adapter, metric, threshold, schedule, seed
        self.tables = {name: table.weight.detach().float() for name, (_, table) in adapter.text_inputs().items()}
        self.positions = _positions(adapter, schedule.positions)
        self.empty = adapter.empty_conditioning()
        self.flow = adapter.prediction_type == "flow"
        # InvMM samples with DDIM 50; flow-matching models keep their own (Euler) sampler.
        self.sampler = None if self.flow else DDIMScheduler.from_config(adapter.pipeline.scheduler.config)

    def _prompt(self, logits: dict[str, torch.Tensor], draws: int, generator: torch.Generator):
        soft = {name: _gumbel_softmax(value.expand(draws, -1, -1), self.schedule.temperature, generator)
                @ self.tables[name] for name, value in logits.items()}
        return self.adapter.encode_text(soft)

    def run(self, pixels: np.ndarray, resolution: int) -> BaselineResult:
        from verifier.similarity import replicated

        schedule, adapter = self.schedule, self.adapter
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed)
        device = adapter.device
        z0 = adapter.encode_images([pixels])
        logits = {name: torch.zeros(1, self.positions, table.shape[0], device=device, requires_grad=True)
                  for name, table in self.tables.items()}
        mean = torch.zeros_like(z0, requires_grad=True)
        log_variance = torch.zeros_like(z0, requires_grad=True)
        optimizer = torch.optim.Adam([*logits.values(), mean, log_variance], lr=schedule.learning_rate)
        kl_weight, previous, losses = schedule.initial_kl_weight, math.inf, deque(maxlen=schedule.loss_window)
        forward_backward = forward = checks = 0
        success, least = False, math.nan
        step = 0
        for step in range(1, schedule.max_steps + 1):
            # 1. The loss: x0 error under 16 draws of noise and prompt, plus the weighted KL.
            noise = (torch.randn((schedule.draws, *z0.shape[1:]), generator=generator).to(device)
                     * (0.5 * log_variance).exp() + mean)
            conditioning = self._prompt(logits, schedule.draws, generator)
            timesteps = adapter.objective.sample_timesteps(generator, schedule.draws).to(device)
            clean = z0.expand(schedule.draws, -1, -1, -1)
            prediction = adapter.predict(adapter.objective.noisy(clean, noise, timesteps), timesteps, conditioning)
            x0_loss = adapter.objective.loss(prediction, clean, noise, timesteps).mean()
            kl = _kl(mean, log_variance)
            optimizer.zero_grad()
            (x0_loss + kl_weight * kl).backward()
            optimizer.step()
            forward_backward += schedule.draws
            losses.append(x0_loss.item())
            if step % schedule.check_every:
                kl_weight += schedule.kl_weight_step
                continue
            # 2. Every 50 steps: adapt the KL weight to the loss's progress, then try to replicate.
            now = statistics.mean(losses)
            kl_weight = kl_weight / 2 if previous - now < schedule.plateau else kl_weight + schedule.kl_weight_step
            previous = now
            checks += 1
            forward += schedule.check_forward()
            least = self._check(logits, mean, log_variance, pixels, resolution, generator)
            if least is not None and replicated(self.metric, np.array([least]), self.threshold)[0]:
                success = True
                break
        with torch.no_grad():
            score = float(_kl(mean, log_variance)) if success else math.inf
        return BaselineResult(success, step, checks, score, math.nan if least is None else float(least),
                              forward_backward, forward, time.perf_counter() - started)

    @torch.no_grad()
    def _check(self, logits, mean, log_variance, pixels, resolution, generator) -> float | None:
        """The least similar of 8 generations at the scale where it is most similar (None: not finite)."""
        schedule, adapter = self.schedule, self.adapter
        latents = (torch.randn((schedule.check_noises, *mean.shape[1:]), generator=generator).to(mean.device)
                   * (0.5 * log_variance).exp() + mean)
        conditioning = self._prompt(logits, 1, generator).expand(schedule.check_noises)
        dtype = adapter.denoiser().dtype
        shipped = adapter.pipeline.scheduler
        if self.sampler is not None:
            adapter.pipeline.scheduler = self.sampler
        try:
            least_by_scale = []
            for scale in schedule.guidance_scales:
                output = adapter.pipeline(
                    **conditioning.to(dtype).pipeline_kwargs(self.empty.expand(schedule.check_noises).to(dtype)),
                    latents=latents.to(dtype), num_images_per_prompt=1, **adapter.guidance_kwargs(scale),
                    num_inference_steps=schedule.sampling_steps, height=resolution, width=resolution,
                    output_type="np", **adapter.generation_kwargs(resolution, resolution))
                scores = np.asarray(self.metric(np.asarray(output.images, dtype=np.float32), pixels), dtype=np.float64)
                if not np.isfinite(scores).all():
                    return None
                least_by_scale.append(scores.min() if self.metric.higher_is_similar else scores.max())
        finally:
            adapter.pipeline.scheduler = shipped
        return max(least_by_scale) if self.metric.higher_is_similar else min(least_by_scale)


def _auc(labels: list[bool], scores: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    finite = [s if math.isfinite(s) else -1e30 for s in scores]  # never reproduced: least memorized
    return float(roc_auc_score(labels, finite)) if len(set(labels)) == 2 else math.nan


def _images(name: str, memorized: int | None, never_trained: int | None, ids: list[str] | None = None) -> list[dict]:
    """Manifest rows of reference model ``name``: the first K memorized and K never-trained, or those ``ids``."""
    from verifier.reference_models import load_manifest

    rows = load_manifest(name)["images"]
    if ids is not None:
        return [next(row for row in rows if row["id"] == image_id) for image_id in ids]
    return ([i for i in rows if i["memorized"]][:memorized] + [i for i in rows if i["split"] == "held_out"][:never_trained])


def compare(name: str, chosen: list[dict], schedule: Schedule, save: Path | None = None,
            saved: dict[str, BaselineResult] | None = None) -> dict:
    """Verifier (defaults) then the baseline on the same images of reference model ``name``; with ``save``, each
    baseline result is appended to that JSON-lines file as it is measured; ``saved`` results (``--replay``) are
    used instead of running the baseline again."""
    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.images import prepare_image
    from verifier.models import load_model
    from verifier.reference_models import reference_model_path
    from verifier.registry import SIMILARITY_METRICS

    folder = reference_model_path(name)
    truth = {i["id"]: bool(i["memorized"]) for i in chosen}
    paths = [folder / i["file"] for i in chosen]
    config = VerifierConfig(device="cpu")

    started = time.perf_counter()
    certificates = certify(folder, paths, Path(tempfile.mkdtemp(prefix="verifier-invmm-")), config)
    verifier_seconds = time.perf_counter() - started

    adapter = load_model(folder, device="cpu")
    resolution = adapter.resolution
    adapter.configure_objective("x0", config.flow_timestep_density, resolution)
    metric = SIMILARITY_METRICS.get(config.similarity)(config)
    threshold = metric.default_threshold if config.similarity_threshold is None else config.similarity_threshold
    baseline = InvMMBaseline(adapter, metric, threshold, schedule, seed=config.seed)
    results = dict(saved or {})
    for image, path in zip(chosen, paths):
        if image["id"] in results:
            continue
        results[image["id"]] = result = baseline.run(prepare_image(path, resolution), resolution)
        if save is not None:
            with save.open("a") as handle:
                handle.write(json.dumps({"model": name, "image": image["id"], "memorized": truth[image["id"]],
                                         **dataclasses.asdict(result)}) + "\n")
        print(f"  baseline {image['id']}: {'success' if result.success else 'no success'} at step {result.steps} "
              f"(least similar {result.least_similar:.3f}), KL {result.score:.4f}, {result.seconds:.0f} s", flush=True)
    return {"name": name, "truth": truth, "certificates": certificates, "verifier_seconds": verifier_seconds,
            "baseline": results, "positions": baseline.positions, "threshold": threshold, "metric": metric.name}


def _saved(files: list[Path]) -> dict[str, dict[str, BaselineResult]]:
    """Baseline results by model and image from ``--save`` files (summary lines skipped)."""
    fields = {f.name for f in dataclasses.fields(BaselineResult)}
    saved: dict[str, dict[str, BaselineResult]] = {}
    for path in files:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "image" in record:
                saved.setdefault(record["model"], {})[record["image"]] = BaselineResult(
                    **{key: value for key, value in record.items() if key in fields})
    return saved


def report(result: dict) -> dict:
    truth, certificates, baseline = result["truth"], result["certificates"], result["baseline"]
    ids = [c["image"]["id"] for c in certificates]
    labels = [truth[i] for i in ids]
    count = len(ids)
    verifier_right = sum((c["verdict"] == "memorized") == truth[c["image"]["id"]]
                         and c["verdict"] in ("memorized", "not_memorized") for c in certificates)
    baseline_right = sum(baseline[i].success == truth[i] for i in ids)
    spent = [c["budget"]["denoiser_evaluations_spent"] for c in certificates]
    v_fb = statistics.mean(s["inversion_forward_backward"] for s in spent)
    v_fwd = statistics.mean(s["error_forward"] + s["sampling_forward"] for s in spent)
    b_fb = statistics.mean(baseline[i].forward_backward for i in ids)
    b_fwd = statistics.mean(baseline[i].forward for i in ids)
    row = {
        "model": result["name"], "images": count, "memorized": sum(labels),
        "verifier_right": verifier_right, "baseline_right": baseline_right,
        "verifier_auc": _auc(labels, [1 - (c["prediction_error"]["ratio"] or math.inf) for c in certificates]),
        "baseline_auc": _auc(labels, [-baseline[i].score for i in ids]),
        "verifier_forward_backward": v_fb, "verifier_forward": v_fwd,
        "baseline_forward_backward": b_fb, "baseline_forward": b_fwd,
        "evaluation_ratio": (b_fb + b_fwd) / (v_fb + v_fwd),
        "verifier_seconds": result["verifier_seconds"] / count,
        "baseline_seconds": statistics.mean(baseline[i].seconds for i in ids),
    }
    print(f"\n== {result['name']}: {count} images ({sum(labels)} memorized), similarity {result['metric']} at "
          f"{result['threshold']}, baseline over {result['positions']} positions")
    for image_id, certificate in zip(ids, certificates):
        b = baseline[image_id]
        print(f"  {image_id:34s} truth {'memorized' if truth[image_id] else 'never trained':13s} "
              f"verifier {certificate['verdict']:17s} ratio {certificate['prediction_error']['ratio']:.3f}  "
              f"baseline {'memorized' if b.success else 'not memorized':13s} steps {b.steps:4d} KL {b.score:.4f}")
    print(f"  verdicts right: verifier {verifier_right}/{count}, baseline {baseline_right}/{count}")
    print(f"  AUC (memorized vs never trained): verifier 1 - error ratio {row['verifier_auc']:.3f}, "
          f"baseline -KL {row['baseline_auc']:.3f}")
    print(f"  denoiser evaluations per image: verifier {v_fb:.0f} forward+backward + {v_fwd:.0f} forward; "
          f"baseline {b_fb:.0f} forward+backward + {b_fwd:.0f} forward; baseline / verifier "
          f"{row['evaluation_ratio']:.1f}x")
    print(f"  wall time per image: verifier {row['verifier_seconds']:.1f} s, baseline {row['baseline_seconds']:.1f} s "
          f"({row['baseline_seconds'] / row['verifier_seconds']:.1f}x)")
    # The mean depends on the mix of images; each group's own cost does not.
    for group, wanted in (("memorized", True), ("never trained", False)):
        members = [(i, s) for i, s in zip(ids, spent) if truth[i] == wanted]
        if not members:
            continue
        verifier_total = statistics.mean(s["total"] for _, s in members)
        baseline_total = statistics.mean(baseline[i].forward_backward + baseline[i].forward for i, _ in members)
        row[f"evaluation_ratio_{group.replace(' ', '_')}"] = baseline_total / verifier_total
        print(f"  {group} images ({len(members)}): verifier {verifier_total:.0f}, baseline {baseline_total:.0f} "
              f"denoiser evaluations per image ({baseline_total / verifier_total:.1f}x)")
    return row


def main() -> int:
    from verifier.reference_models import REFERENCE_MODELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["reference-32px"], choices=REFERENCE_MODELS)
    parser.add_argument("--memorized", type=int, default=None, help="first K memorized images (default: all)")
    parser.add_argument("--never-trained", type=int, default=None, help="first K never-trained images (default: all)")
    parser.add_argument("--max-steps", type=int, default=Schedule.max_steps, help="InvMM's budget (2,000)")
    parser.add_argument("--check-every", type=int, default=Schedule.check_every)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--save", type=Path, default=None,
                        help="append each image's baseline result, then each model's summary row, to this JSON-lines file")
    parser.add_argument("--replay", type=Path, nargs="+", default=None,
                        help="--save files: report their baseline results beside a fresh verifier run on the same "
                             "images (the baseline is not run again)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    schedule = Schedule(max_steps=args.max_steps, check_every=args.check_every)
    print(f"InvMM schedule: {schedule}; one run; {platform.machine()}, torch threads {torch.get_num_threads()}",
          flush=True)
    saved = _saved(args.replay) if args.replay else {}
    rows = []
    for name in (list(saved) if args.replay else args.model):
        chosen = _images(name, args.memorized, args.never_trained, list(saved[name]) if args.replay else None)
        rows.append(report(compare(name, chosen, schedule, args.save, saved.get(name))))
        if args.save:
            with args.save.open("a") as handle:
                handle.write(json.dumps({"summary": rows[-1]}) + "\n")
    print(f"\n{'model':20s} {'images':>6s} {'right v/b':>10s} {'AUC v/b':>12s} {'evals/image v':>15s} "
          f"{'evals/image b':>15s} {'b/v':>6s} {'s/image v/b':>13s}")
    for row in rows:
        print(f"{row['model']:20s} {row['images']:>6d} {row['verifier_right']:>4d}/{row['baseline_right']:<5d} "
              f"{row['verifier_auc']:>5.3f}/{row['baseline_auc']:<6.3f} "
              f"{row['verifier_forward_backward'] + row['verifier_forward']:>15.0f} "
              f"{row['baseline_forward_backward'] + row['baseline_forward']:>15.0f} {row['evaluation_ratio']:>5.1f}x "
              f"{row['verifier_seconds']:>6.1f}/{row['baseline_seconds']:<6.1f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
