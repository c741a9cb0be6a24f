"""The certificate and summary schema: one typed definition, versioned, published as JSON Schema.

Every certificate ``verifier`` writes is built through :class:`Certificate` and every summary
through :class:`Summary`, so nothing reaches disk that the published schema (``verifier schema``)
would reject. Readers (resume, ``verify``, the report) go through :func:`read_certificate`, which
validates a file against the same definition and names the first field that does not fit.

Numbers are finite by construction: a measurement that came out NaN or infinite is recorded as
``null`` with the verdict ``inconclusive`` and a reason, never as a bare ``NaN`` (which strict JSON
parsers reject) and never behind a clean verdict.

Version history:

- 1: the first certificates (no declared schema; per-generation scores not recorded).
- 2: declared schema; per-generation similarity scores per guidance scale; verifier version, the
  schema version and the sha256 of similarity weights in the resume key; ``null`` for non-finite
  measurements; the never-seen twin control and the calibration a verdict used.
- 3: model families (issue 7): the model's family, pipeline class, denoiser parameter count,
  training objective and conditioning recipe; the witness names every tensor it holds (SDXL adds pooled embeddings) and
  the pipeline's further keywords; witness variables are stored per name (``variables.<name>``).
- 4: sequential sampling (issue 9): each scale's bounds hold at the confidence of the look its seed
  count ended at (``look``, ``confidence``); the probability condition records the planned ``looks``,
  their confidences and the method; the witness lists the seeds actually used; the budget records the
  denoiser evaluations spent on this image. Witness files keep their metadata (space, seeds, image
  sha256) in one sorted JSON entry, ``verifier``, so that the same witness is the same bytes.
- 5: flow-matching families (issue 8): grid timesteps may be floats (sigma x num_train_timesteps); the
  objective records its error form (``native`` or ``x0``), shift and training density; the model
  record says whether it is a few-step distilled model, on what evidence, and what a verdict covers
  (``distillation``); the witness names the pipeline keyword its guidance scale goes to
  (``guidance_keyword``).
- 6: inversion until the error levels off (issue 8): the prediction error records the steps this
  image's inversion took and the error ratio at each check (``inversion_steps``, ``inversion_checks``);
  the budget records ``inversion_max_steps``.
- 7: a not_memorized claim's target (issue 9): the probability condition records ``replication_bound``,
  the upper bound on the replication probability that sampling went on until every scale reached
  (null: no target).
- 8: intended or unintended (issue 10): the owner's ``context`` from the manifest (entity, explicit and
  implicit prompts, public), each owner prompt tested like the witness (``prompts``: error ratio,
  replications per guidance scale with their bounds and scores) and the image's ``classification``
  (``explicit_intended``, ``implicit_intended``, ``unintended`` or null, its reproduction level and the
  reason); the context is part of the run key. The summary counts images per category and, under a
  release-gate policy, records the policy and each image's gate result. Where the witness reproduced its
  image, the witness decoded into readable text and tested like a prompt (``readable_prompt``).
- 9: the report shows every generation (issue 11): the witness records its contact sheet
  (``generations_sheet``: one row per guidance scale, one tile per seed, the file's sha256). Partial
  replication (issue 10): ``part_replication`` holds every generation's window scores, the best window,
  the never-seen twin's window scores where the control ran, the finding and its statement; the budget
  records the part control's denoiser evaluations; the summary counts images with a replicated part
  (``parts_found``) and says per image whether one was found (``part_found``).
- 10: the owner's own copy (issue 22): ``framing`` says whether the framing search ran (where the witness
  at the owner's framing replicated nothing), what each search found, which one the witness comes from,
  and the framing of the owner's image its closest generation matches; the budget records the framing
  search's denoiser evaluations (``framing_denoiser_evaluations``).
- 11: mirrored copies (issue 22): ``framing`` records whether the mirrored framing search is on
  (``mirror_enabled``, config ``framing_mirror``), what it found where it ran (``mirrored_search``) and
  its cost (``mirrored_denoiser_evaluations``, also in the budget); the witness may come from it. The
  aligned search (where the framing searches replicated nothing): what it found (``aligned_search``), the
  framing it cut the owner's image at (``aligned_framing``, shifts in fractions of a pixel) and its cost
  (``aligned_denoiser_evaluations``, also in the budget).
- 12: candidate framings (issue 22): ``framing.screen`` records where the framing search inverted the owner's
  image: every candidate framing with its screen ratios after a third and after all of the inversion steps, the
  framing chosen, and its never-seen twin's screen where the framing search's control ran; the framing
  search's error ratio is measured on that cut (the owner's pixels only), and its cost includes the screen's.
  With ``framing_mirror`` the screen's candidates include mirrored framings, and the mirrored framing search
  of v11 (``mirrored_search``, ``mirrored_denoiser_evaluations``, the witness "mirrored framing search") is gone.
- 13: ``verify`` compares whole derived records (issue 23): the verdict, its reason and every field of the three
  conditions, the prompts' records and the classification must be what follows from the recorded numbers, text
  included; the default thresholds' sources cite docs/decisions.md (the README's "Decisions" moved there), so
  a v12 certificate's sources no longer follow from v13's rule book. The screen's candidates include scales 0.8 and
  1.25 (config ``framing_scales``, on by default; ``framing.scales_enabled``).
- 14: the screen inverts every candidate for all of its steps and screens once (``framing.screen``: ``steps`` one
  number, each candidate's ``ratio``; no ``kept``): successive halving lost weakly memorized images (issue 22).
  The summary indexes the run (issue 25): each entry's ``certificate_sha256`` (the certificate's canonical
  JSON), which ``verify`` checks with the folder as one unit (``verifier.run_folder``); ids are NFC-normalized
  and at most 120 bytes.
- 15: the screen inverts every candidate for ``framing_steps`` Adam steps (config, default 120), no longer
  ``inversion_steps`` (60): an inversion finds a weakly memorized image in a re-framed copy late (issue 22).
- 16: the model may carry LoRA adapters (``--lora PATH[:SCALE]``, issue 24): ``model.adapters`` records each
  (file sha256, layout, scale, modules), ``model.base_fingerprint`` the weights without them, and
  ``model.fingerprint`` covers both (``verifier.models.lora.adapted_fingerprint``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 17
CERTIFICATE_SCHEMA_ID = "verifier.certificate"
SUMMARY_SCHEMA_ID = "verifier.summary"
VERDICTS = ("memorized", "rarely_reproduced", "inconclusive", "not_memorized")
Verdict = Literal["memorized", "rarely_reproduced", "inconclusive", "not_memorized"]
Category = Literal["explicit_intended", "implicit_intended", "unintended"]
Level = Literal["memorized", "rarely_reproduced"]
DifferentialCategory = Literal["introduced", "inherited", "removed", "neither", "undetermined"]
Sha256 = Field(pattern=r"^[0-9a-f]{64}$")
PREFIXED_SHA256 = r"^sha256:[0-9a-f]{64}$"
PrefixedSha256 = Field(pattern=PREFIXED_SHA256)


class CertificateFormatError(ValueError):
    """A certificate or summary file that does not match the schema; the message names the field."""


class _Strict(BaseModel):
    # Unknown keys are rejected (an edited certificate cannot smuggle in a field), and NaN or
    # infinity is refused wherever a float is declared.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


def _top_level(schema_id: str) -> ConfigDict:
    """A file's root model: strict like the rest, and named by its schema id and version."""
    return ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True,
                      json_schema_extra={"$id": f"{schema_id}/v{SCHEMA_VERSION}"})


class SchemaTag(_Strict):
    id: str
    version: int


class Preprocessing(_Strict):
    policy: str
    resolution: int = Field(ge=8)


class ImageRecord(_Strict):
    id: str = Field(min_length=1, description="Stable id; the certificate's file is <id>.json")
    path: str = Field(description="Where the image was read from (informative; the sha256 identifies it)")
    sha256: str = Sha256
    preprocessing: Preprocessing


class LoraRecord(_Strict):
    kind: Literal["lora"]
    path: str = Field(description="Where the adapter file was read from (informative; the sha256 identifies it)")
    sha256: str = Sha256
    layout: Literal["diffusers", "kohya", "other"] = Field(
        description="The file's key layout: diffusers/PEFT (unet.*), kohya / A1111 (lora_unet_*), or other")
    scale: float = Field(description="The weight pipeline.set_adapters gave it")
    adapter_name: str = Field(description="The adapter_name it was loaded under (load_lora_weights)")
    modules: int = Field(ge=1, description="LoRA modules (down and up factor) the file holds")
    adapted_modules: int = Field(ge=1, description="Modules of the model peft adapted with it")
    targets: dict[str, list[str]] = Field(description="Per component, the module names its LoRA targets")


class EmbeddingRecord(_Strict):
    kind: Literal["textual_inversion"]
    path: str = Field(description="Where the embedding file was read from (informative; the sha256 identifies it)")
    sha256: str = Sha256
    layout: Literal["diffusers", "a1111", "sdxl"] = Field(
        description="diffusers ({token: vectors}), A1111 (emb_params or string_to_param) or SDXL (clip_l, clip_g)")
    token: str = Field(description="The token it was loaded under (pipeline.load_textual_inversion(path, token=...))")
    vectors: int = Field(ge=1, description="Vectors the token stands for (token, token_1, ... in the vocabulary)")
    text_encoders: list[str] = Field(description="The text encoders whose input tables it extends")


class ModelRecord(_Strict):
    source: str
    kind: str
    fingerprint: str = Field(pattern=PREFIXED_SHA256,
                             description="The model under test: the base weights' fingerprint with every adapter's "
                                         "sha256 and scale (equal to base_fingerprint without adapters)")
    base_fingerprint: str = Field(pattern=PREFIXED_SHA256,
                                  description="sha256 over the base model's files, without adapters")
    adapters: list[Annotated[LoraRecord | EmbeddingRecord, Field(discriminator="kind")]] = Field(
        description="LoRA adapters applied to the base, in order, then textual-inversion embeddings")
    family: str = Field(description="The model family whose adapter measured it (verifier.registry.MODEL_FAMILIES)")
    pipeline: str = Field(description="The diffusers pipeline class that regenerates a witness")
    resolution: int
    prediction_type: str
    denoiser_parameters: int
    objective: dict[str, Any] = Field(
        description="The training objective the error is measured in: name, prediction type, training timesteps")
    conditioning: dict[str, Any] = Field(
        description="How the family builds its conditioning: encoders, features, micro-conditioning, empty prompt")
    distillation: dict[str, Any] = Field(
        description="Few-step distillation: the evidence found in the model's configs and name, and what a verdict "
                    "on such a model covers (verifier.models.distillation)")


class SimilarityWeights(_Strict):
    file: str
    sha256: str = Sha256


class SimilarityCondition(_Strict):
    value: Optional[float] = Field(description="Best similarity over every generation; null if not finite")
    threshold: float
    margin: Optional[float]
    passed: bool = Field(alias="pass")
    metric: str
    threshold_source: str
    direction: Literal["higher is more similar", "lower is more similar"]
    weights: Optional[SimilarityWeights]
    replications: int = Field(ge=0)
    generations: int = Field(ge=1)


class ControlRecord(_Strict):
    kind: str
    guidance_scale: float
    replications: int = Field(ge=0)
    generations: int = Field(ge=1)
    scores: list[Optional[float]]
    error_ratio: Optional[float]
    p_value: float = Field(ge=0, le=1)
    witness_specific: bool


class ExistenceCondition(_Strict):
    value: Optional[float] = Field(description="Error under the witness / under the empty prompt; null if not finite")
    threshold: float
    margin: Optional[float]
    passed: bool = Field(alias="pass")
    measure: str
    threshold_source: str
    passed_by: Optional[Literal["error ratio", "control"]]
    control: Optional[ControlRecord] = Field(
        description="The never-seen twin control, where it was needed (the witness replicated, the ratio stayed high)")


class ScaleResult(_Strict):
    guidance_scale: float
    replications: int = Field(ge=0)
    generations: int = Field(ge=1)
    rate: float = Field(ge=0, le=1)
    look: int = Field(ge=0, description="The look this scale's seeds ended at (0: the first)")
    confidence: float = Field(gt=0, lt=1, description="One-sided confidence of this scale's bounds at that look")
    lower_bound: float = Field(ge=0, le=1)
    upper_bound: float = Field(ge=0, le=1)
    scores: list[Optional[float]] = Field(description="Similarity of each seed's generation, in seed order")


class ProbabilityCondition(_Strict):
    value: float = Field(ge=0, le=1, description="Lower confidence bound on the replication rate at the best scale")
    threshold: float
    margin: float
    passed: bool = Field(alias="pass")
    measure: str
    confidence: float = Field(description="Confidence of every bound together (union bound over scales and looks)")
    looks: list[int] = Field(min_length=1, description="Seeds per scale at each planned look")
    look_confidences: list[float] = Field(min_length=1, description="Each look's one-sided confidence per scale")
    sequential: str = Field(description="When sampling goes on, and how the error rate is split over the looks")
    best_guidance_scale: float
    rate: float = Field(ge=0, le=1)
    upper_bound: float = Field(ge=0, le=1)
    replication_bound: Optional[float] = Field(
        gt=0, lt=1, description="The target a not_memorized verdict's upper bounds reached at every scale (config "
                                "replication_bound); null: no target, the bounds are what the seeds gave")
    per_scale: list[ScaleResult] = Field(min_length=1)


class Conditions(_Strict):
    similarity: SimilarityCondition
    existence: ExistenceCondition
    probability: ProbabilityCondition


class InversionCheck(_Strict):
    step: int = Field(ge=0)
    ratio: Optional[float]


class PredictionError(_Strict):
    timesteps: list[int | float] = Field(description="The model's input timesteps of the fixed grid: integers for DDPM "
                                         "models, sigma x num_train_timesteps for flow-matching models")
    noise_draws: int
    inverted: list[Optional[float]]
    empty: list[Optional[float]]
    inverted_mean: Optional[float]
    empty_mean: Optional[float]
    ratio: Optional[float]
    inversion_loss_first_last: list[Optional[float]] = Field(min_length=2, max_length=2)
    inversion_steps: int = Field(ge=1, description="The Adam steps this image's inversion took: inversion_steps, "
                                 "more while its grid error still fell (at most the budget's inversion_max_steps)")
    inversion_checks: list[InversionCheck] = Field(description="The error ratio on the fixed grid at each check of "
                                                   "the inversion; the last is the witness's")


class WitnessFile(_Strict):
    file: str
    sha256: str = Sha256


class GenerationsSheet(_Strict):
    file: str
    sha256: str = Sha256
    tile: int = Field(ge=1, description="Side of one tile in pixels: the generation itself, shrunk (antialiased) "
                                        "to at most 96 pixels")
    layout: str = Field(description="How the tiles are laid out, in words")


class WitnessRecord(_Strict):
    file: str
    sha256: str = Sha256
    tensors: list[str] = Field(description="Stock pipeline keywords stored in the witness file (prompt_embeds, ...)")
    negative_tensors: list[str] = Field(description="The negative's keywords in the file (negative_prompt_embeds, ...)")
    negative: str
    pipeline_kwargs: dict[str, Any] = Field(description="Further keywords the family's pipeline gets (SDXL's sizes)")
    seeds: list[int]
    generator: str
    guidance_scales: list[float]
    num_inference_steps: int
    height: int
    width: int
    scheduler: dict[str, Any]
    closest_generation: str
    closest_seed: int
    generations_sheet: GenerationsSheet
    closest_guidance_scale: float
    guidance_keyword: str = Field(description="The pipeline keyword the guidance scale is passed as: guidance_scale, "
                                              "or true_cfg_scale for a Flux model without the guidance embedding")


class CalibrationRecord(_Strict):
    file: str
    sha256: str = Sha256
    images: int = Field(ge=1)
    false_alarm_rate: float = Field(gt=0, lt=1)
    confidence: float
    rank: int = Field(ge=1)
    error_ratio_threshold: float
    similarity_threshold: float


class ContextRecord(_Strict):
    entity: Optional[str] = Field(description="What the image shows, as the owner names it")
    explicit_prompts: list[str] = Field(description="Prompts naming the entity, under which reproduction is expected")
    implicit_prompts: list[str] = Field(description="Prompts implying it without naming it, reproduction expected")
    public: Optional[bool] = Field(description="Whether the owner marked the work public (null: not said)")


class _Replications(_Strict):
    """Replications among generations at one guidance scale, with their one-sided Clopper-Pearson bounds."""

    guidance_scale: float
    replications: int = Field(ge=0)
    generations: int = Field(ge=1)
    rate: float = Field(ge=0, le=1)
    lower_bound: float = Field(ge=0, le=1)
    upper_bound: float = Field(ge=0, le=1)


class PromptScale(_Replications):
    scores: list[Optional[float]] = Field(description="Similarity of each seed's generation, in seed order")


class PromptRecord(_Strict):
    kind: Literal["explicit", "implicit", "decoded"] = Field(
        description="explicit / implicit: the owner's (names / implies the entity); decoded: the witness decoded")
    prompt: str
    error_ratio: Optional[float] = Field(description="Error under the prompt / under the empty prompt, on the fixed grid")
    per_scale: list[PromptScale] = Field(min_length=1)
    confidence: float = Field(gt=0, lt=1, description="One-sided confidence of each scale's bounds (Bonferroni)")
    replications: int = Field(ge=0)
    generations: int = Field(ge=1)
    best_guidance_scale: float
    lower_bound: float = Field(ge=0, le=1, description="The best scale's lower bound on the replication rate")
    reproduces: bool = Field(description="At least one generation replicated the image")
    reaches_min_rate: bool = Field(description="The lower bound reaches the probability condition's minimum rate")


class Classification(_Strict):
    category: Optional[Category] = Field(description="Naseh et al.'s kind, decided by verifier.taxonomy; null when "
                                                     "nothing reproduced the image")
    level: Optional[Level] = Field(description="The strongest reproduction measured (witness or owner prompt)")
    reason: str
    evidence: list[int] = Field(description="Indices into prompts of the prompts that decided the category")


class ReadablePrompt(_Strict):
    method: str = Field(description="How the witness was decoded into text (verifier.readable)")
    prompts: list[PromptRecord] = Field(description="Each distinct decoded text, tested like a prompt")
    statement: str = Field(description="In words: whether a readable prompt reproduced the image")


class PartScale(_Strict):
    guidance_scale: float
    scores: list[list[Optional[float]]] = Field(description="Per seed (in seed order), each window's score")


class PartBest(_Replications):
    """The best window; its bounds are this window's alone, at the run's confidence, not adjusted for choosing it
    (the finding rests on the twin control, which chooses its own best window the same way)."""

    window: int = Field(ge=0)
    box: list[int] = Field(min_length=3, max_length=3, description="top, left, side in pixels")


class PartControl(_Strict):
    kind: str
    guidance_scale: float
    window: int = Field(ge=0, description="The twin's best window")
    replications: int = Field(ge=0)
    generations: int = Field(ge=1)
    scores: list[list[Optional[float]]]
    p_value: float = Field(ge=0, le=1)
    witness_specific: bool
    witness: WitnessFile = Field(description="The twin's inverted conditioning (<id>.part-control.safetensors)")


class PartReplication(_Strict):
    method: str
    metric: str
    threshold: float
    windows: list[list[int]] = Field(description="Each window's top, left and side in pixels")
    per_scale: list[PartScale]
    seeds_compared: int = Field(ge=1, description="The first look's seeds, over which the best window is chosen")
    best: PartBest
    candidate: bool = Field(description="The whole image was not reproduced and the best window replicated often "
                                        "enough for the control to find it specific")
    control: Optional[PartControl] = Field(description="The never-seen twin's windows, where the control ran")
    found: bool = Field(description="A part is replicated although the whole image is not")
    statement: str


class SearchSummary(_Strict):
    verdict: Verdict
    error_ratio: Optional[float] = Field(description="The witness's error ratio on the image it inverted (the "
                                                     "owner's, or the cut its search inverted)")
    replications: int = Field(ge=0)
    generations: int = Field(ge=0)


class FramingValue(_Strict):
    scale: float = Field(gt=0, description="The model's frame side / the side of the owner image's centred square")
    shift: list[float] = Field(min_length=2, max_length=2,
                               description="The frame's centre moved (down, right), in fractions of its side")
    mirror: bool


class ScreenCandidate(FramingValue):
    ratio: Optional[float] = Field(description="Its witness's error over the empty prompt's at the screen's draws, "
                                               "after all of the inversion's steps (null: not finite)")


class TwinScreen(_Strict):
    candidates: list[ScreenCandidate]
    chosen: FramingValue


class ScreenRecord(_Strict):
    method: str
    steps: int = Field(ge=1, description="The Adam steps every candidate is inverted for before the screen (config "
                       "framing_steps)")
    draws: int = Field(ge=1, description="(timestep, noise) draws each screen measures on")
    candidates: list[ScreenCandidate]
    chosen: FramingValue = Field(description="The framing the framing search inverted the owner's image at")
    twin: Optional[TwinScreen] = Field(description="The never-seen twin's screen, where the framing search's "
                                                   "control ran")


class FramingRecord(_Strict):
    method: str
    noise_floor: float = Field(ge=0, lt=1, description="The framing search inverts at noise levels above this "
                                                       "fraction of the schedule")
    bounds: dict[str, Any] = Field(description="The framings searched (verifier.alignment.FramingBounds)")
    enabled: bool = Field(description="config framing_search")
    searched: bool = Field(description="Whether the framing search ran (only where the first witness replicated "
                                       "nothing)")
    mirror_enabled: bool = Field(description="config framing_mirror")
    scales_enabled: bool = Field(description="config framing_scales")
    witness: Literal["owner's framing", "framing search", "aligned search"] = Field(
        description="Which search the witness, the conditions and the verdict come from")
    first_search: SearchSummary = Field(description="What the search at the owner's framing found")
    screen: Optional[ScreenRecord] = Field(description="The candidate framings screened before the framing "
                                                       "search (verifier.screen), where it ran")
    framing_search: Optional[SearchSummary] = Field(description="What the framing search found, where it ran")
    aligned_search: Optional[SearchSummary] = Field(description="What the search of the owner's image cut at the "
                                                                "refined framing found, where it ran")
    aligned_framing: Optional[FramingValue] = Field(description="The framing the aligned search cut the owner's "
                                                                "image at, where it ran")
    closest_framing: Optional[FramingValue] = Field(description="The framing of the owner's image the closest "
                                                                "generation matches, for a framing-search witness")
    denoiser_evaluations: Optional[dict[str, Any]] = Field(description="The framing search's cost: its witness "
                                                                       "and its control")
    aligned_denoiser_evaluations: Optional[dict[str, Any]] = Field(
        description="The aligned search's cost: its witness (its empty-prompt error included) and its control")
    statement: str


class Certificate(_Strict):
    """One image's memorization certificate (``<id>.json``)."""

    model_config = _top_level(CERTIFICATE_SCHEMA_ID)

    schema_: SchemaTag = Field(alias="schema")
    verdict: Verdict
    verdict_reason: str
    image: ImageRecord
    model: ModelRecord
    conditions: Conditions
    prediction_error: PredictionError
    witness: WitnessRecord
    control_witness: Optional[WitnessFile] = Field(description="The twin's inverted conditioning, where a control ran")
    part_replication: PartReplication = Field(description="A part of the image replicated although the whole image "
                                                          "is not (verifier.regions)")
    context: Optional[ContextRecord] = Field(description="The owner's context from the manifest, if any")
    prompts: list[PromptRecord] = Field(description="The owner's prompts, each tested like the witness")
    classification: Classification
    readable_prompt: ReadablePrompt = Field(description="The witness decoded into readable text and tested, where it "
                                                        "reproduced the image")
    framing: FramingRecord = Field(description="The framing search: owners' copies framed unlike the training copy")
    calibration: Optional[CalibrationRecord] = Field(description="The calibration whose thresholds were used, if any")
    budget: dict[str, Any]
    config: dict[str, Any] = Field(description="The fully resolved config (verifier.config.VerifierConfig)")
    environment: dict[str, Any]
    timings: dict[str, Any]
    run_key: str = PrefixedSha256


class GateResult(_Strict):
    category: Optional[Category] = Field(description="The category the policy judged (an intended one on a work not "
                                                     "marked public may be judged as unintended)")
    level: Optional[Level]
    fails: bool
    reason: str


class SummaryImage(_Strict):
    id: str
    path: str
    sha256: str = Sha256
    verdict: Verdict
    error_ratio: Optional[float]
    replication_rate: float = Field(ge=0, le=1)
    category: Optional[Category]
    gate: Optional[GateResult] = Field(description="This image under the run's release-gate policy, if one was given")
    part_found: bool = Field(description="A part of the image is replicated although the whole image is not")
    certificate: str
    certificate_sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                                    description="sha256 of the certificate's canonical JSON (keys sorted, no "
                                                "whitespace): the summary indexes the run's certificates")


class PolicyRecord(_Strict):
    source: str
    sha256: str = Sha256
    description: str
    fail: dict[Category, list[Level]]
    public_only: bool
    fail_on_part: bool = Field(description="An image nothing reproduced whole fails when a part of it is replicated")
    fail_differential: list[DifferentialCategory] = Field(
        description="The differential categories (certify --baseline) that fail the gate")


class Summary(_Strict):
    """The run's ``summary.json``: every image, its verdict, counts per verdict."""

    model_config = _top_level(SUMMARY_SCHEMA_ID)

    schema_: SchemaTag = Field(alias="schema")
    model: ModelRecord
    config: dict[str, Any]
    counts: dict[Verdict, int]
    categories: dict[str, int] = Field(description="Images per category (verifier.taxonomy); 'none': not reproduced")
    policy: Optional[PolicyRecord] = Field(description="The release-gate policy the run was judged by, if any")
    gate_failed: Optional[bool] = Field(description="Whether any image fails the policy (null without a policy)")
    parts_found: int = Field(ge=0, description="Images with a part replicated although the whole image is not")
    images: list[SummaryImage]
    seconds: float = Field(ge=0)


def certificate_tag() -> dict:
    return {"id": CERTIFICATE_SCHEMA_ID, "version": SCHEMA_VERSION}


def summary_tag() -> dict:
    return {"id": SUMMARY_SCHEMA_ID, "version": SCHEMA_VERSION}


def json_schema(kind: Literal["certificate", "summary"] = "certificate") -> dict:
    """The published JSON Schema (draft 2020-12) of a certificate or a summary."""
    model = Certificate if kind == "certificate" else Summary
    schema = model.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
    return f"{where}: {problem['msg']}"


def validated(kind: Literal["certificate", "summary"], value: dict) -> dict:
    """``value`` checked against the schema and returned as plain JSON data (raises CertificateFormatError)."""
    model = Certificate if kind == "certificate" else Summary
    try:
        return model.model_validate(value).model_dump(mode="json", by_alias=True)
    except ValidationError as error:
        raise CertificateFormatError(f"{kind} does not match schema v{SCHEMA_VERSION}: {_first_problem(error)}") from None


def read_certificate(path: str | Path) -> dict:
    """Read and validate one certificate file; the error names the file, the version and the field."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CertificateFormatError(f"certificate {str(path)!r} cannot be read as JSON: {error}") from None
    if not isinstance(value, dict):
        raise CertificateFormatError(f"certificate {str(path)!r} is not a JSON object")
    tag = value.get("schema")
    if not isinstance(tag, dict) or tag.get("id") != CERTIFICATE_SCHEMA_ID:
        raise CertificateFormatError(f"{str(path)!r} is not a verifier certificate (schema tag {tag!r})")
    if tag.get("version") != SCHEMA_VERSION:
        raise CertificateFormatError(
            f"certificate {str(path)!r} has schema version {tag.get('version')!r}; this verifier reads version "
            f"{SCHEMA_VERSION}. Re-certify with this version, or use the verifier version that wrote it "
            f"({value.get('environment', {}).get('verifier', 'unknown')})")
    try:
        return validated("certificate", value)
    except CertificateFormatError as error:
        raise CertificateFormatError(f"certificate {str(path)!r}: {error}") from None
