"""One frozen, typed configuration for a certification run.

Values are merged as command line > config file > defaults. A config file is TOML or JSON with
the field names below at top level; unknown keys are rejected with a "did you mean" hint, and
every value is checked against what is allowed before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

FAIL_ON_LEVELS = ("memorized", "rarely_reproduced", "never")
# Upper bounds that keep a typo (1e9 generations) from becoming an out-of-memory crash hours later.
MAX_STEPS, MAX_DRAWS, MAX_BATCH, MAX_GENERATIONS, MAX_GUIDANCE = 100_000, 1024, 4096, 10_000, 100.0
MAX_SEED = 2**32 - 1
DTYPES = ("float32", "float16", "bfloat16")
AUTOCAST = ("off", "bfloat16", "float16")  # the denoiser's compute dtype under torch.autocast (weights stay dtype)
ERROR_FORMS = ("native", "x0")  # how verifier.objectives measures the prediction error
TIMESTEP_DENSITIES = ("logit_normal", "uniform")  # flow-matching training densities (verifier.objectives)


def option(default, help: str, choices: tuple[str, ...] | str | None = None):
    """A field the command line sets too (``--field-name``): ``verifier.cli.options`` makes the option from it, its
    help from ``help``, the allowed values (a tuple, or the name of a ``verifier.registry`` registry) and the
    default, so the help cannot disagree with the config."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names it and what is allowed."""


@dataclass(frozen=True)
class VerifierConfig:
    """Every knob of a certification run. Defaults are model-agnostic (see docs/decisions.md)."""

    # Inversion: where the free variables live and how hard the search is.
    inversion_space: str = option(
        "token_embeddings", "Where inversion's free variables live (verifier.spaces).", choices="INVERSION_SPACES")
    inversion_tokens: int = 8
    inversion_steps: int = option(60, "Adam steps every image gets; images whose error still falls go on.")
    inversion_max_steps: int | None = option(
        None, "The most Adam steps any image gets; unset: 4 x inversion_steps (equal to it: a fixed budget).")
    inversion_check_every: int = 20  # steps between two checks of the error ratio, past inversion_steps
    inversion_min_drop: float = 0.02  # go on while the last window lowered the error ratio by more than this
    inversion_learning_rate: float = 0.1  # relative to each variable's scale (see verifier.spaces)
    inversion_noise_draws: int = 4
    batch_size: int = option(16, "Images per batch (does not change results).")
    denoiser_batch: int | None = option(
        None, "Rows per denoiser call; unset: from the free memory, measured (does not change results).")
    gradient_checkpointing: bool = option(
        False, "Recompute the denoiser's activations in inversion's backward pass: less memory, more time.")

    # Prediction error: a fixed timestep grid and noise draws shared by every image.
    error_timesteps: int = 10
    error_noise_draws: int = 4
    error_form: str = option(
        "native", "Prediction error in the model's own loss (native) or on the clean latent it implies (x0).",
        choices=ERROR_FORMS)
    flow_timestep_density: str = "logit_normal"  # flow-matching models: the training density the grid follows

    # Existence: the inverted conditioning must lower the model's error well below the empty prompt's.
    existence_max_error_ratio: float = 0.5

    # Similarity and probability: generations from the witness.
    similarity: str = option(
        "ssim", "The similarity metric generations are compared with the image by.", choices="SIMILARITY_METRICS")
    similarity_threshold: float | None = option(
        None, "The similarity threshold; unset: the metric's documented default.")
    generations: int = option(16, "Seeds per guidance scale at the first look.")
    sampling_doublings: int = option(
        3, "Times the best scale's seeds may double while the rate is undecided (0: a fixed sample).")
    guidance_scales: tuple[float, ...] = (1.0, 3.0)
    sampling_steps: int = 25
    probability_min_rate: float = 0.25
    replication_bound: float | None = option(
        None, "The upper bound on the replication probability a not_memorized verdict must reach (e.g. 0.1): seeds "
        "double at every guidance scale until it does; unset: the bound the first look's seeds give.")
    confidence: float = 0.95
    decode_witness: bool = option(
        True, "Where the witness reproduced an image, decode it into readable text and test that like a prompt "
        "(docs/context-and-policy.md, \"Readable evidence\").")
    framing_search: bool = option(
        True, "Where nothing replicated at the owner's framing, search framings of the owner's image (scale, shift, "
        "mirror; docs/owner-copies.md).")
    framing_scales: bool = option(
        True, "The framing search's screen also tries every candidate framing at scales 0.8 and 1.25, for copies "
        "framed wider or tighter than the trained crop (46 more candidates in the screen, 71 in all, per clean "
        "verdict; docs/owner-copies.md).")
    framing_mirror: bool = option(
        False, "The framing search's screen also tries every candidate framing mirrored left-right, for mirrored copies"
        " (twice the screen's candidates per clean verdict: 71 more with framing_scales; docs/owner-copies.md).")
    framing_steps: int = option(
        120, "Adam steps the framing search's screen inverts every candidate framing for (a fixed budget: an inversion "
        "finds a weakly memorized image in a re-framed copy late, docs/owner-copies.md \"Longer inversions in the "
        "screen\"); its cost grows in proportion.")

    # Run.
    seed: int = option(0, "The run seed, from 0 to 2**32-1.")
    device: str = option("auto", "Where to run: auto, cpu, cuda, cuda:N or mps.")
    dtype: str = option("float32", "The weights' dtype.", choices=DTYPES)
    autocast: str = option(
        "off", "Run the denoiser and sampling under torch.autocast in this dtype, the weights, free variables and loss "
        "staying in the weights' dtype or float32; off: not (docs/gpu.md says when to use it).", choices=AUTOCAST)
    resolution: int | None = None  # None: the model's native resolution
    fail_on: str = option(
        "memorized", "Exit 1 when any image reaches this verdict (rarely_reproduced includes memorized; never: always "
        "0).", choices=FAIL_ON_LEVELS)
    lpips_weights: str | None = option(None, "torchvision AlexNet weights for the lpips metric (never downloaded).")
    sscd_weights: str | None = option(None, "SSCD TorchScript file for the sscd metric.")
    calibration: str | None = option(
        None, "A `verifier calibrate` file for this model: its thresholds replace the two defaults.")

    def __post_init__(self) -> None:
        finite = math.isfinite
        checks: list[tuple[str, bool, str]] = [
            ("inversion_tokens", 1 <= self.inversion_tokens <= 75, "an integer from 1 to 75"),
            ("inversion_steps", 1 <= self.inversion_steps <= MAX_STEPS, f"an integer from 1 to {MAX_STEPS}"),
            ("inversion_max_steps", self.inversion_max_steps is None
             or self.inversion_steps <= self.inversion_max_steps <= MAX_STEPS,
             f"an integer from inversion_steps ({self.inversion_steps}) to {MAX_STEPS}, or unset for "
             "4 x inversion_steps (equal to inversion_steps: every image gets exactly that many)"),
            ("framing_steps", 1 <= self.framing_steps <= MAX_STEPS, f"an integer from 1 to {MAX_STEPS}"),
            ("inversion_check_every", 1 <= self.inversion_check_every <= MAX_STEPS, f"an integer from 1 to {MAX_STEPS}"),
            ("inversion_min_drop", finite(self.inversion_min_drop) and 0 <= self.inversion_min_drop < 1,
             "a number in [0, 1): how much the error ratio must fall over a window for inversion to go on"),
            ("inversion_learning_rate", finite(self.inversion_learning_rate) and 0 < self.inversion_learning_rate <= 10,
             "a finite number in (0, 10] (relative to the space's scale; the default is 0.1)"),
            ("inversion_noise_draws", 1 <= self.inversion_noise_draws <= MAX_DRAWS, f"an integer from 1 to {MAX_DRAWS}"),
            ("batch_size", 1 <= self.batch_size <= MAX_BATCH, f"an integer from 1 to {MAX_BATCH}"),
            ("denoiser_batch", self.denoiser_batch is None or 1 <= self.denoiser_batch <= MAX_BATCH,
             f"an integer from 1 to {MAX_BATCH}, or unset to choose it from the free memory"),
            ("error_timesteps", 1 <= self.error_timesteps <= 1000, "an integer from 1 to 1000"),
            ("error_noise_draws", 1 <= self.error_noise_draws <= MAX_DRAWS, f"an integer from 1 to {MAX_DRAWS}"),
            ("error_form", self.error_form in ERROR_FORMS, f"one of {', '.join(ERROR_FORMS)}"),
            ("flow_timestep_density", self.flow_timestep_density in TIMESTEP_DENSITIES,
             f"one of {', '.join(TIMESTEP_DENSITIES)}"),
            ("existence_max_error_ratio", finite(self.existence_max_error_ratio) and 0 < self.existence_max_error_ratio <= 1,
             "a number in (0, 1]"),
            ("similarity_threshold", self.similarity_threshold is None or finite(self.similarity_threshold),
             "a finite number, or unset for the metric's default"),
            ("generations", 1 <= self.generations <= MAX_GENERATIONS, f"an integer from 1 to {MAX_GENERATIONS}"),
            ("sampling_doublings", 0 <= self.sampling_doublings <= 10
             and self.generations * 2**self.sampling_doublings <= MAX_GENERATIONS,
             f"an integer from 0 to 10 with generations x 2^sampling_doublings at most {MAX_GENERATIONS} "
             "(0: a fixed-sample test)"),
            ("guidance_scales", 1 <= len(self.guidance_scales) <= 16
             and all(finite(g) and 1 <= g <= MAX_GUIDANCE for g in self.guidance_scales)
             and len(set(self.guidance_scales)) == len(self.guidance_scales),
             f"a non-empty list of up to 16 distinct numbers from 1 to {MAX_GUIDANCE}"),
            ("sampling_steps", 1 <= self.sampling_steps <= 1000, "an integer from 1 to 1000"),
            ("probability_min_rate", finite(self.probability_min_rate) and 0 < self.probability_min_rate <= 1,
             "a number in (0, 1]"),
            ("confidence", finite(self.confidence) and 0.5 <= self.confidence < 1, "a number in [0.5, 1)"),
            ("replication_bound", self.replication_bound is None
             or (finite(self.replication_bound) and 0 < self.replication_bound < 1),
             "a number in (0, 1), or unset for the bound the first look's seeds give"),
            ("seed", 0 <= self.seed <= MAX_SEED, f"an integer from 0 to {MAX_SEED}"),
            ("dtype", self.dtype in DTYPES, f"one of {', '.join(DTYPES)}"),
            ("autocast", self.autocast in AUTOCAST, f"one of {', '.join(AUTOCAST)}"),
            ("device", re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
             "auto, cpu, cuda, cuda:N or mps"),
            ("fail_on", self.fail_on in FAIL_ON_LEVELS, f"one of {', '.join(FAIL_ON_LEVELS)}"),
            ("resolution", self.resolution is None or (8 <= self.resolution <= 4096 and self.resolution % 8 == 0),
             "a multiple of 8 up to 4096, or unset for the model's native resolution"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"config {name}={getattr(self, name)!r} is not allowed: expected {allowed}")
        from verifier.registry import INVERSION_SPACES, SIMILARITY_METRICS

        if self.inversion_space not in INVERSION_SPACES:
            raise ConfigError(
                f"config inversion_space={self.inversion_space!r} is not allowed: expected one of "
                f"{', '.join(INVERSION_SPACES.names())}"
            )
        if self.similarity not in SIMILARITY_METRICS:
            raise ConfigError(
                f"config similarity={self.similarity!r} is not allowed: expected one of "
                f"{', '.join(SIMILARITY_METRICS.names())}"
            )
        self._check_replication_bound_is_reachable()
        if self.similarity_threshold is not None:
            low, high = SIMILARITY_METRICS.get(self.similarity).threshold_range
            if not low <= self.similarity_threshold <= high:
                raise ConfigError(
                    f"config similarity_threshold={self.similarity_threshold!r} is not allowed for {self.similarity}: "
                    f"expected a number from {low:g} to {high:g}")

    def _check_replication_bound_is_reachable(self) -> None:
        """A target the last look cannot reach with no replication would leave not_memorized claims unmade."""
        if self.replication_bound is None:
            return
        from verifier.conditions import clopper_pearson, look_confidences, sampling_looks

        looks = sampling_looks(self.generations, self.sampling_doublings)
        last = look_confidences(self.confidence, len(self.guidance_scales), len(looks))[-1]
        reachable = clopper_pearson(0, looks[-1], last)[1]  # 0 replications in the last look's seeds
        if reachable > self.replication_bound:
            raise ConfigError(
                f"config replication_bound={self.replication_bound!r} is not allowed with generations="
                f"{self.generations} and sampling_doublings={self.sampling_doublings}: their last look ({looks[-1]} "
                f"seeds per scale) can bound the replication probability by {reachable:.3f} at best; expected a "
                f"number from {reachable:.3f} to 1, or raise generations or sampling_doublings")

    def inversion_step_limit(self) -> int:
        """The most steps any image's inversion gets (``inversion_max_steps``, resolved)."""
        return 4 * self.inversion_steps if self.inversion_max_steps is None else self.inversion_max_steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, fully resolved values (as recorded in certificates)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def fingerprint_dict(self) -> dict[str, Any]:
        """The values that change a certificate's numbers (not where it runs, how it gates, or where weight
        files lie: the run key takes the weights' sha256 instead of their path)."""
        ignored = {"device", "fail_on", "batch_size", "denoiser_batch", "gradient_checkpointing", "lpips_weights",
                   "sscd_weights", "calibration"}
        values = {key: value for key, value in self.to_dict().items() if key not in ignored}
        # Added later: keys of earlier runs stay valid while these keep their defaults.
        for name, default in (("autocast", "off"), ("framing_mirror", False), ("framing_scales", True)):
            if values[name] == default:
                del values[name]
        return values


FIELD_TYPES = {f.name: f for f in fields(VerifierConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Check a raw value's type against the field's declared type; convert lists to tuples."""
    default = FIELD_TYPES[name].default
    annotation = str(FIELD_TYPES[name].type)
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"config {name} cannot be empty: expected a value like {default!r}")
    if annotation.startswith("tuple"):
        items = value if isinstance(value, (list, tuple)) else [value]
        try:
            return tuple(float(item) for item in items if not isinstance(item, bool))
        except (TypeError, ValueError):
            raise ConfigError(f"config {name}={value!r} is not allowed: expected a list of numbers") from None
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"config {name}={value!r} is not allowed: expected true or false")
        return value
    if annotation.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config {name}={value!r} is not allowed: expected an integer")
        return value
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config {name}={value!r} is not allowed: expected a number")
        return float(value)
    if annotation.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"config {name}={value!r} is not allowed: expected a string")
        return value
    return value


def _check_keys(keys, source: str) -> None:
    for key in keys:
        if key not in FIELD_TYPES:
            hint = difflib.get_close_matches(key, FIELD_TYPES, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(FIELD_TYPES)}"
            raise ConfigError(f"{source}: unknown key {key!r}{suggestion}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Raw key/value pairs of a TOML or JSON config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"--config {str(path)!r} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"--config {str(path)!r} cannot be read: {error.strerror or error}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"--config {str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {str(path)!r} must hold a table of keys")
    data.pop("description", None)  # presets explain themselves; not a setting
    return data


def build_config(file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> VerifierConfig:
    """Defaults, then the file's values, then ``overrides`` (the command line; None values are unset)."""
    values: dict[str, Any] = {}
    if file is not None:
        from_file = read_config_file(file)
        _check_keys(from_file, f"--config {str(file)!r}")
        values.update(from_file)
    if overrides:
        explicit = {key: value for key, value in overrides.items() if value is not None}
        _check_keys(explicit, "option")
        values.update(explicit)
    return dataclasses.replace(VerifierConfig(), **{key: _coerce(key, value) for key, value in values.items()})
