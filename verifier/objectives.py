"""Training objectives: how a model was taught to denoise, written once.

The loss inversion minimizes and the error certificates report are the same quantity: the model's
own training loss at noise level ``t``. An objective says how to noise a clean latent, what a
perfect denoiser outputs, which timesteps training drew and the fixed grid the error is measured on.

- :class:`DDPMObjective`: the discrete-time DDPM objective of Stable Diffusion 1.x/2.x and SDXL,
  ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``, with the target named by the scheduler's
  ``prediction_type`` (``epsilon``, ``v_prediction`` or ``sample``), ``t`` uniform over the
  training timesteps.
- :class:`FlowMatchObjective`: the rectified-flow objective of SD3/SD3.5 and Flux,
  ``x_t = (1 - sigma) x0 + sigma noise`` with target ``noise - x0``, the sigmas of the model's
  ``FlowMatchEulerDiscreteScheduler`` (its static ``shift``, or the dynamic shift the pipeline
  computes from the image's token count) and a uniform or logit-normal training density over them.

Every objective measures its error in one of two forms (``error_form``): ``native``, the squared
error of the model's own output against its target (its training loss), or ``x0``, the squared
error of the clean latent the output implies (InvMM's form, and diffusers' SD3
``precondition_outputs``). The form is recorded in certificates.
"""

from __future__ import annotations

import torch

from verifier.config import TIMESTEP_DENSITIES

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class ObjectiveError(ValueError):
    """The model's scheduler names an objective verifier does not implement."""


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (N,) tensor shaped to broadcast over (N, C, H, W)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class _Objective:
    """The loss both forms share: ``|| output - target ||^2`` per sample, or the same on the implied ``x0``."""

    error_form = "native"

    def loss(self, prediction: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample mean squared error of ``prediction`` (the model's output at ``noisy(z0, noise, t)``); (N,).
        ``weights`` (N, 1, H, W) of 0/1 keeps the mean to the latent cells it marks (``alignment.Cut``)."""
        if self.error_form == "x0":
            squared = (self.implied_x0(prediction, self.noisy(z0, noise, timesteps), timesteps) - z0).pow(2)
        else:
            squared = (prediction - self.target(z0, noise, timesteps)).pow(2)
        if weights is None:
            return squared.flatten(1).mean(dim=1)
        weights = weights.to(squared.dtype)
        return (squared * weights).flatten(1).sum(dim=1) / (weights.flatten(1).sum(dim=1) * squared.shape[1])


class DDPMObjective(_Objective):
    """The DDPM objective of a model whose scheduler has ``alphas_cumprod`` and a ``prediction_type``."""

    name = "ddpm"

    def __init__(self, scheduler, device: torch.device, *, error_form: str = "native"):
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ObjectiveError(f"scheduler prediction_type {prediction_type!r} is not supported; expected one of "
                                 f"{', '.join(PREDICTION_TYPES)}")
        self.prediction_type = prediction_type
        self.error_form = error_form
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)

    def _abar(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _per_sample(self.alphas_cumprod[timesteps], like)

    def noisy(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``sqrt(abar_t) z0 + sqrt(1 - abar_t) noise`` (the forward process the model was trained on)."""
        a = self._abar(timesteps, z0)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def target(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What a perfect denoiser outputs: the noise, the velocity or ``z0``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            a = self._abar(timesteps, z0)
            return a.sqrt() * noise - (1 - a).sqrt() * z0
        return z0

    def implied_x0(self, prediction: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The clean latent a prediction implies (as the scheduler's step computes it)."""
        a = self._abar(timesteps, noisy)
        if self.prediction_type == "epsilon":
            return (noisy - (1 - a).sqrt() * prediction) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * noisy - (1 - a).sqrt() * prediction
        return prediction

    def sample_timesteps(self, generator: torch.Generator, count: int, noise_floor: float = 0.0) -> torch.Tensor:
        """``count`` training timesteps drawn as training drew them (uniformly), from ``generator``; with a
        ``noise_floor`` f > 0, from the noisiest 1 - f of them only (t >= f x num_train_timesteps)."""
        if noise_floor == 0.0:
            return torch.randint(0, self.num_train_timesteps, (count,), generator=generator)
        low = int(round(noise_floor * self.num_train_timesteps))
        return torch.randint(low, self.num_train_timesteps, (count,), generator=generator)

    def grid(self, count: int) -> list[int]:
        """``count`` timesteps at the centres of equal slices of the training schedule."""
        return [int((k + 0.5) * self.num_train_timesteps / count) for k in range(count)]

    def describe(self) -> dict:
        return {"name": self.name, "prediction_type": self.prediction_type,
                "num_train_timesteps": self.num_train_timesteps, "training_timesteps": "uniform",
                "error_form": self.error_form}


class FlowMatchObjective(_Objective):
    """Rectified flow (SD3, SD3.5, Flux): ``x_t = (1 - sigma) x0 + sigma noise``, target ``noise - x0``.

    Timesteps are the model's own input values, ``sigma x num_train_timesteps`` (floats), taken from
    the training table of sigmas the scheduler starts with: ``num_train_timesteps`` values from 1 down
    to ``1 / num_train_timesteps``, shifted by the static ``shift``, or, where the scheduler shifts
    dynamically, by ``mu`` computed from the image's token count (``image_seq_len``) as the pipeline
    computes it. Training picks a table index from a density over [0, 1) (diffusers' SD3 and Flux
    training scripts: ``logit_normal`` with mean 0 and std 1, or ``uniform``); the grid sits at that
    density's quantiles, so the measured error is an equal-weight average over what training saw.
    """

    name = "flow_matching"
    prediction_type = "flow"
    LOGIT_MEAN, LOGIT_STD = 0.0, 1.0  # diffusers' train_dreambooth_sd3.py / _flux.py defaults

    def __init__(self, scheduler, device: torch.device, *, image_seq_len: int, error_form: str = "native",
                 timestep_density: str = "logit_normal"):
        config = scheduler.config
        if not hasattr(scheduler, "time_shift") or "shift" not in config:
            raise ObjectiveError(f"scheduler {type(scheduler).__name__} is not a flow-matching scheduler "
                                 "(expected FlowMatchEulerDiscreteScheduler)")
        if timestep_density not in TIMESTEP_DENSITIES:
            raise ObjectiveError(f"flow_timestep_density {timestep_density!r} is not supported; expected one of "
                                 f"{', '.join(TIMESTEP_DENSITIES)}")
        self.error_form, self.timestep_density = error_form, timestep_density
        self.num_train_timesteps = int(config.num_train_timesteps)
        self.dynamic = bool(config.get("use_dynamic_shifting", False))
        # The table is the scheduler's own: a fresh copy as training builds it (static shift applied at
        # construction) or, with dynamic shifting, as the pipeline sets it for the image (``mu``).
        fresh = type(scheduler).from_config(config)
        if self.dynamic:
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # the pipelines' own mu

            self.mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                                      config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                      config.get("max_shift", 1.15))
            fresh.set_timesteps(self.num_train_timesteps, device="cpu", mu=self.mu)
            self.shift_record = {"dynamic": True, "mu": self.mu, "image_seq_len": image_seq_len,
                                 "time_shift_type": config.get("time_shift_type", "exponential")}
        else:
            self.shift_record = {"dynamic": False, "shift": float(config.shift)}
        self.table = fresh.timesteps.to("cpu", torch.float32)  # model-input timesteps, descending

    def _sigma(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _per_sample(timesteps.to(like.device, torch.float32) / self.num_train_timesteps, like)

    def noisy(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``(1 - sigma) z0 + sigma noise`` (diffusers' ``scale_noise`` and the training scripts)."""
        sigma = self._sigma(timesteps, z0)
        return (1 - sigma) * z0 + sigma * noise

    def target(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The velocity ``noise - x0`` a perfect model outputs."""
        return noise - z0

    def implied_x0(self, prediction: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x_t - sigma v`` (the training scripts' ``precondition_outputs``)."""
        return noisy - self._sigma(timesteps, noisy) * prediction

    def _indices(self, quantiles: torch.Tensor) -> torch.Tensor:
        """Table indices of points in [0, 1) of the training density's cumulative scale."""
        if self.timestep_density == "logit_normal":  # sigmoid of a normal, by its inverse cumulative function
            quantiles = torch.sigmoid(self.LOGIT_MEAN + self.LOGIT_STD * torch.special.ndtri(quantiles))
        return (quantiles * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)

    def sample_timesteps(self, generator: torch.Generator, count: int, noise_floor: float = 0.0) -> torch.Tensor:
        """``count`` training timesteps drawn from the training density, from ``generator``; with a
        ``noise_floor`` f > 0, from the noisiest 1 - f of that density only (the table runs from the
        highest noise down, so those are its first quantiles)."""
        uniform = torch.rand(count, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        return self.table[self._indices(uniform * (1.0 - noise_floor))]

    def grid(self, count: int) -> list[float]:
        """``count`` timesteps at the centres of equal slices of the training density."""
        quantiles = torch.tensor([(k + 0.5) / count for k in range(count)], dtype=torch.float64)
        return [float(value) for value in self.table[self._indices(quantiles)]]

    def describe(self) -> dict:
        return {"name": self.name, "prediction_type": self.prediction_type, "target": "noise - x0",
                "num_train_timesteps": self.num_train_timesteps, "shift": self.shift_record,
                "training_timesteps": self.timestep_density if self.timestep_density == "uniform" else
                f"logit_normal(mean={self.LOGIT_MEAN}, std={self.LOGIT_STD})", "error_form": self.error_form}
