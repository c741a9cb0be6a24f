"""Stage 3: invert images into the model's text-conditioning space.

The free variables of each image live in an *inversion space* (``verifier.spaces``, a registry
entry). Each image has its own variables and its own random stream (timesteps and noise drawn from
a generator seeded by the run's seed and the image's sha256), and the batch loss is the *sum* of
per-image losses: Adam then updates each image exactly as if it were alone in its batch.

How long each image is inverted is decided by the image itself (``InversionSchedule``): every
image gets ``steps``; from then on its error ratio (stage 4's measurement on the fixed grid, common
random numbers, so two checks differ only through the conditioning, over the empty prompt's error
on the same grid) is checked every ``window`` steps, and an image whose ratio fell by more than
``min_drop`` over the last window goes on, with its own Adam state, until its ratio levels off or
``max_steps``. The drop is in ratio units (a fraction of the empty prompt's error), the unit the
existence condition decides in: a memorized image already at a few percent stops at once, an image
still descending goes on. Images that stop leave the batch, so the rest cost no more than they
would alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch

from verifier.error import denoising_error, prediction_error
from verifier.models.base import Conditioning, ModelAdapter


@dataclass(frozen=True)
class InversionSchedule:
    """How many Adam steps each image gets (see the module docstring)."""

    steps: int  # every image
    max_steps: int  # the most any image gets; equal to ``steps``: a fixed budget
    window: int  # steps between two checks of the error ratio
    min_drop: float  # go on while the last window lowered the error ratio by more than this
    error_timesteps: int  # the fixed grid the checks measure on (stage 4's)
    error_noise_draws: int

    @classmethod
    def of(cls, config, fixed: bool = False) -> "InversionSchedule":
        """A run's schedule, from its ``VerifierConfig``; ``fixed``: the framing search's, exactly ``framing_steps``
        for every image (its whole-grid ratio is not what it lowers)."""
        steps = config.framing_steps if fixed else config.inversion_steps
        return cls(steps=steps, max_steps=steps if fixed else config.inversion_step_limit(),
                   window=config.inversion_check_every, min_drop=config.inversion_min_drop,
                   error_timesteps=config.error_timesteps, error_noise_draws=config.error_noise_draws)

    def planned_checks(self) -> list[int]:
        """The checks every image gets: at ``steps`` and, where images may go on, the one it is compared
        with a window earlier (0: the starting point)."""
        return [max(0, self.steps - self.window), self.steps] if self.max_steps > self.steps else [self.steps]

    def goes_on(self, step: int, previous: float | None, current: float) -> bool:
        """Whether an image checked at ``step`` (error ratio ``current``, ``previous`` at the check
        before) is inverted further. A NaN ratio never goes on."""
        if step < self.steps:
            return True
        falling = previous is not None and previous - current > self.min_drop
        return falling and step < self.max_steps

    def next_check(self, step: int) -> int:
        return min(self.steps if step < self.steps else step + self.window, self.max_steps)

    def check_steps(self) -> list[int]:
        """Every step an image may be checked at, in order (the last is ``max_steps``)."""
        steps = [self.planned_checks()[0]]
        while steps[-1] < self.max_steps:
            steps.append(self.next_check(steps[-1]))
        return steps

    def replayed_checks(self, ratios: list[float]) -> list[int]:
        """The check steps this schedule prescribes for an image whose checks measured ``ratios`` (one
        per step of ``check_steps``, as far as they go), as ``verify`` replays it."""
        steps = self.check_steps()
        for index, (step, current) in enumerate(zip(steps, ratios)):
            if not self.goes_on(step, ratios[index - 1] if index else None, current):
                return steps[: index + 1]
        return steps[: len(ratios) + 1]


@dataclass
class Inversion:
    """What inversion found for a batch of images."""

    variables: dict[str, torch.Tensor]  # name -> (B, ...) the free variables
    conditioning: Conditioning  # the witness, float32
    errors: torch.Tensor  # (B, timesteps) the grid error under the witness (stage 4's measurement)
    loss_curves: list[torch.Tensor]  # per image, its training loss at each of its steps
    checks: list[list[tuple[int, float]]]  # per image, (step, error ratio) at each check

    @property
    def steps(self) -> list[int]:
        return [len(curve) for curve in self.loss_curves]


def image_generator(seed: int, sha256: str, purpose: str) -> torch.Generator:
    """A CPU generator that depends only on the run's seed, the image's bytes and the purpose."""
    digest = hashlib.sha256(f"{seed}:{sha256}:{purpose}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def invert(adapter: ModelAdapter, space, z0: torch.Tensor, image_hashes: list[str], *, schedule: InversionSchedule,
           empty_errors: torch.Tensor, learning_rate: float, noise_draws: int, seed: int,
           on_step: Callable[[], None] | None = None, noise_floor: float = 0.0,
           weights: torch.Tensor | None = None) -> Inversion:
    """Minimize each image's prediction error over its conditioning with Adam, for as long as its
    schedule says; return the witnesses and their grid errors. ``empty_errors`` (B,) is each image's
    mean grid error under the empty prompt, the yardstick of the checks' ratios. ``on_step`` is called
    after every Adam step of the batch (progress). ``noise_floor`` > 0 draws the training timesteps from
    the noisiest ``1 - noise_floor`` of the schedule only (the framing search, ``verifier.framing``); the
    checks still measure on the whole grid. ``weights`` (B, 1, h, w): the latent cells each image's loss and
    checks count (an ``alignment.Cut``'s covered part; every cell where None)."""
    batch = z0.shape[0]
    generators = [image_generator(seed, sha, "inversion") for sha in image_hashes]
    search = InversionSearch(adapter, space, z0, generators, learning_rate, noise_draws, noise_floor, weights)
    final = {name: torch.empty_like(value) for name, value in search.variables.items()}
    errors = torch.empty(batch, schedule.error_timesteps)
    curves: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    checks: list[list[tuple[int, float]]] = [[] for _ in range(batch)]
    active = list(range(batch))  # rows of the input batch still being inverted, in search's row order
    step = 0

    # 1. Steps up to the first check, then check every window; each check keeps the images still falling.
    next_check = schedule.planned_checks()[0]
    while active:
        curve = search.run(next_check - step, on_step)
        for row, image in enumerate(active):
            curves[image].append(curve[row])
        step = next_check
        measured = search.grid_errors(schedule)
        keep = []
        for row, image in enumerate(active):
            ratio = float(measured[row].mean() / empty_errors[image])
            previous = checks[image][-1][1] if checks[image] else None
            checks[image].append((step, ratio))
            if schedule.goes_on(step, previous, ratio):
                keep.append(row)
            else:
                # 2. This image is done: its variables and the error they reach are its result.
                for name, value in search.variables.items():
                    final[name][image] = value[row].detach()
                errors[image] = measured[row]
        if not keep:
            break
        active = [active[row] for row in keep]
        search.keep(keep)
        next_check = schedule.next_check(step)

    # 3. The witnesses.
    with torch.no_grad():
        conditioning = space.conditioning(final).map(lambda tensor: tensor.float())
    return Inversion(final, conditioning, errors, [torch.cat(parts) if parts else torch.empty(0) for parts in curves],
                     checks)


class InversionSearch:
    """The images still being inverted: their variables, Adam state and random streams, row-aligned."""

    def __init__(self, adapter: ModelAdapter, space, z0: torch.Tensor, generators: list[torch.Generator],
                 learning_rate: float, noise_draws: int, noise_floor: float = 0.0,
                 weights: torch.Tensor | None = None):
        self.adapter, self.space, self.z0, self.generators, self.noise_draws = adapter, space, z0, generators, noise_draws
        self.noise_floor, self.weights = noise_floor, weights
        self.variables = {name: value.to(z0.device).requires_grad_(True)
                          for name, value in space.initial(z0.shape[0]).items()}
        self.optimizer = torch.optim.Adam([{"params": [value], "lr": learning_rate * space.scales[name]}
                                           for name, value in self.variables.items()])

    def run(self, steps: int, on_step: Callable[[], None] | None = None) -> torch.Tensor:
        """``steps`` Adam steps on every image; the per-image training loss, (rows, steps) on the host."""
        device, draws, rows = self.z0.device, self.noise_draws, self.z0.shape[0]
        objective = self.adapter.objective
        z_repeated = self.z0.repeat_interleave(draws, dim=0)
        w_repeated = None if self.weights is None else self.weights.repeat_interleave(draws, dim=0)
        curve = torch.empty(rows, steps, device=device)  # copied to the host once, not every step
        for step in range(steps):
            timesteps = torch.cat([objective.sample_timesteps(g, draws, self.noise_floor)
                                   for g in self.generators]).to(device)
            noise = torch.cat([torch.randn((draws, *self.z0.shape[1:]), generator=g) for g in self.generators])
            self.optimizer.zero_grad(set_to_none=True)
            conditioning = self.space.conditioning(self.variables)
            limit = self.adapter.rows_per_call
            if limit is None or rows * draws <= limit:
                errors = denoising_error(self.adapter, z_repeated, noise.to(device), timesteps,
                                         conditioning.repeat_interleave(draws), w_repeated)
                per_image = errors.view(rows, draws).mean(dim=1)
                per_image.sum().backward()
            else:
                per_image = self._accumulated(conditioning, z_repeated, noise.to(device), timesteps, limit, w_repeated)
            self.optimizer.step()
            curve[:, step] = per_image.detach()
            if on_step is not None:
                on_step()
        return curve.cpu()

    def _accumulated(self, conditioning: Conditioning, z_repeated: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor, limit: int, weights: torch.Tensor | None) -> torch.Tensor:
        """One step's loss and gradients in calls of at most ``limit`` (image, draw) rows: each call's
        backward stops at a detached copy of the conditioning, whose summed gradient then goes through the
        text encoders once. The same gradients as one call, up to float rounding."""
        draws, rows = self.noise_draws, self.z0.shape[0]
        leaves = conditioning.map(lambda tensor: tensor.detach().requires_grad_(True))
        errors = torch.empty(rows * draws, device=z_repeated.device)
        for first in range(0, rows * draws, limit):
            part = range(first, min(first + limit, rows * draws))
            chunk = denoising_error(self.adapter, z_repeated[part.start : part.stop], noise[part.start : part.stop],
                                    timesteps[part.start : part.stop], leaves.select([row // draws for row in part]),
                                    None if weights is None else weights[part.start : part.stop])
            (chunk.sum() / draws).backward()
            errors[part.start : part.stop] = chunk.detach()
        tensors, leaf_tensors = conditioning.tensors(), leaves.tensors()
        names = [name for name in tensors if tensors[name].requires_grad and leaf_tensors[name].grad is not None]
        torch.autograd.backward([tensors[name] for name in names], [leaf_tensors[name].grad for name in names])
        return errors.view(rows, draws).mean(dim=1)

    @torch.no_grad()
    def witness(self) -> Conditioning:
        """The conditioning the current variables give, float32."""
        return self.space.conditioning(self.variables).map(lambda tensor: tensor.float())

    def grid_errors(self, schedule: InversionSchedule) -> torch.Tensor:
        """Stage 4's prediction error under the current variables, (rows, timesteps)."""
        return prediction_error(self.adapter, self.z0, self.witness(), timesteps=schedule.error_timesteps,
                                noise_draws=schedule.error_noise_draws, weights=self.weights)

    def keep(self, rows: list[int]) -> None:
        """Go on with these rows only, each with the Adam state it has (exactly as if it were alone)."""
        if len(rows) == self.z0.shape[0]:
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.z0.device)
        self.z0 = self.z0[index]
        self.weights = None if self.weights is None else self.weights[index]
        self.generators = [self.generators[row] for row in rows]
        groups = []
        kept_state = {}
        for group in self.optimizer.param_groups:
            (old,) = group["params"]
            new = old.detach()[index].clone().requires_grad_(True)
            state = self.optimizer.state.get(old, {})
            kept_state[new] = {key: (value[index] if value.dim() > 0 else value).clone() if torch.is_tensor(value)
                               else value for key, value in state.items()}
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": [new]})
            for name, value in self.variables.items():
                if value is old:
                    self.variables[name] = new
        self.optimizer = torch.optim.Adam(groups)
        for param, state in kept_state.items():
            self.optimizer.state[param] = state
