"""The library entry point: ``certify(model, images, out, config)``.

The recipe, top to bottom (method.md section 3): ``certify`` = ``open_run`` (steps 0-1) ->
``certify_batch`` per batch (steps 2-6) -> ``finish_run`` (step 7).

0. check every image and the output folder before anything is loaded;
1. load the model;
2. encode each image to its latent;
3. measure its prediction error under the empty prompt on the fixed grid (the yardstick);
4. invert it into the text-conditioning space until its error ratio (error under the candidate
   witness over the yardstick, checked every few steps) levels off; the last check is the witness's;
5. check the three conditions on generations from the witness (5b: where the witness replicates the
   image but the error ratio stays high, a never-seen twin control tells specific from generic; 5c:
   decide; 5f: where the witness replicated nothing, the framing search (``verifier.framing``) runs
   steps 4-5c again at the noisiest timesteps, on the owner's image cut where a screen over candidate
   framings (``verifier.screen``; mirrored ones too with ``framing_mirror``) says the model knows it best,
   against the owner's image framed best, and its witness stands where it replicates (5g: where it
   replicated nothing, the aligned search: the owner's image cut at the framing the framing witness's
   closest generation matches, refined to a fraction of a pixel, searched like the owner's framing on the
   owner's pixels only, its witness standing where it replicates or its verdict is not clean); 5d: where
   the whole image was not reproduced, look for a
   replicated part and check it against the twin; 5e: test the owner's prompts and, where the witness reproduced the image, its
   decoding into readable text, like the witness);
6. certify: write the witness, the closest generation, the contact sheet and then the certificate;
7. write the run's summary and report.

Images are processed in batches of ``config.batch_size``; each image has its own variables and
random streams, so its certificate does not depend on which images shared its batch. Under
``accelerate launch -m verifier certify ...`` each process certifies every N-th image still to do,
and the main process writes the summary and report after every process has finished.
"""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from verifier.alignment import FramedSimilarity, OwnerImage, latent_weights, refine
from verifier.certificate.report import report_html
from verifier.certificate.schema import certificate_tag, validated
from verifier.certificate.sheet import LAYOUT as SHEET_LAYOUT, sheet_png, tile_size
from verifier.certificate.signing import load_private_key, sign_file, signature_holds
from verifier.certificate.store import (
    REPORT_FILE, RUN_FILE, SUMMARY_FILE, RunFolderLock, atomic_write_bytes, atomic_write_json, check_output_path,
    claim_run_folder, clean_temporaries, finite_or_none, png_bytes, prepare_output_folder, reusable_certificate,
    run_config_values, run_key, summary, write_witness,
)
from verifier.calibration import check_calibration, read_calibration
from verifier.conditions import (
    TWIN, Thresholds, decide, inversion_problems, needs_control, redecide, resolve_thresholds, sampling_looks,
    scales_to_extend,
)
from verifier.control import ControlRun, run_controls
from verifier.config import VerifierConfig
from verifier.error import prediction_error
from verifier.framing import BOUNDS as FRAMING_BOUNDS, NOISE_FLOOR as FRAMING_NOISE_FLOOR
from verifier.framing import ALIGNED_SEARCH, aligned_search_runs, framing_record, reproduced_nothing
from verifier.framing import search_summary, witness_search
from verifier.images import PREPROCESSING, ProtectedImage, check_images, collect_images, prepare_image
from verifier.invert import Inversion, InversionSchedule, invert
from verifier.memory import row_budget
from verifier.models import Conditioning, ModelAdapter, autocast_dtype, load_model
from verifier.models.lora import LoraSpec
from verifier.models.textual_inversion import EmbeddingSpec
from verifier.models.base import classifier_free_rows
from verifier.progress import RunProgress
from verifier.prompts import prompt_tests
from verifier.readable import METHOD as READABLE_METHOD, decoded_prompts
from verifier.readable import statement as readable_statement
from verifier.regions import WindowSSIM, best_window, is_candidate, part_record
from verifier.registry import INVERSION_SPACES, SIMILARITY_METRICS
from verifier.run_folder import restore_run_record
from verifier.sampling import sample, seed_sequence
from verifier.screen import screen, screen_cost, screen_record
from verifier.similarity import replicated
from verifier.taxonomy import REPRODUCED_VERDICTS, classify


def _environment(model: ModelAdapter) -> dict:
    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "verifier": _verifier_version(),
        "torch": torch.__version__,
        "diffusers": installed("diffusers"),
        "transformers": installed("transformers"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(model.device),
        "device_name": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else platform.machine(),
        "dtype": str(model.dtype).replace("torch.", ""),
        "autocast": None if model.autocast is None else str(model.autocast).replace("torch.", ""),
        # On CUDA, float32 convolutions (and matrix multiplies, where enabled) may run in TF32: record which.
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        if model.device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
    }


def denoiser_evaluations(config: VerifierConfig, generations: dict[float, int] | None = None,
                         inversion_steps: int | None = None, checks: int | None = None, *,
                         cfg_rows: Callable[[float], int] = classifier_free_rows, empty_pass: bool = True) -> dict:
    """Hardware-independent cost of one image's verdict (or of its control, which samples at one scale),
    in denoiser evaluations: the plan (every image's inversion steps and checks, the first look), or with
    ``generations`` (seeds per guidance scale), ``inversion_steps`` and ``checks`` what was spent. A check
    of the grid error, like the empty prompt's error, is one pass over the grid; a sampling step costs the
    model's ``cfg_rows`` at its guidance scale (the adapter's: two with classifier-free guidance above 1, one
    for Flux-dev's guidance embedding). ``empty_pass`` False: the empty prompt's error was another search's,
    reused (the framing search's)."""
    generations = generations or {scale: config.generations for scale in config.guidance_scales}
    sampling = sum(count * config.sampling_steps * cfg_rows(scale) for scale, count in generations.items())
    inversion = (inversion_steps or config.inversion_steps) * config.inversion_noise_draws
    checks = checks or len(InversionSchedule.of(config).planned_checks())
    error = (checks + empty_pass) * config.error_timesteps * config.error_noise_draws
    return {"inversion_forward_backward": inversion, "error_forward": error, "sampling_forward": sampling,
            "total": inversion + error + sampling}


def _with_screen(cost: dict, screened: dict | None, config: VerifierConfig) -> dict:
    """A search's cost with its screen's (``verifier.screen``), where one chose what it inverted."""
    if screened is None:
        return cost
    extra = screen_cost(screened, config.inversion_noise_draws)
    return cost | {"screen": extra, "total": cost["total"] + extra["total"]}


def _screened_evaluations(evaluations: dict, screened: dict, config: VerifierConfig) -> dict:
    """The framing search's cost: its witness's, its screen included, and its control's."""
    return evaluations | {"witness": _with_screen(evaluations["witness"], screened, config)}


def _verifier_version() -> str | None:
    try:
        return version("verifier")
    except PackageNotFoundError:
        return None


def certify(model: str | Path | ModelAdapter, images: Sequence[str | Path], out: str | Path,
            config: VerifierConfig | None = None, *, allow_pickle: bool = False,
            model_config: str | Path | None = None, loras: Sequence[LoraSpec] = (),
            embeddings: Sequence[EmbeddingSpec] = (), sign_key: str | Path | None = None, progress: Callable[[str], None] | None = None, policy=None,
            tracker: RunProgress | None = None) -> list[dict]:
    """Certify every image; return the certificates (also written to ``out``) in input order.

    Every input and the output folder are checked before the model is loaded. Images already
    certified in ``out`` under the same model, config, image bytes and verifier version, with an
    intact witness, are not redone. With ``sign_key`` (an Ed25519 PEM private key) every
    certificate and the summary get an ``.sig`` signature file. ``loras`` are LoRA adapters applied to ``model``
    (``verifier.models.lora``), ``embeddings`` textual-inversion embeddings (``verifier.models.textual_inversion``). With ``policy`` (a
    ``verifier.policy.Policy``) the summary records each image's release-gate result. ``tracker``
    (``verifier.progress.RunProgress``) is told images finished and each batch's stages as they go.
    """
    config = config or VerifierConfig()
    processes = _processes(config.device)
    say = _rank_prefixed(progress or (lambda message: None), processes)
    started = time.time()
    # One device per process: accelerate's (cuda:<local rank>) where the config leaves it to us.
    device = str(processes.device) if processes.num_processes > 1 and config.device == "auto" else config.device
    # 0-1. Check every input and the output folder, load the model, claim the folder (the main process
    #      first), reuse what is done; every process has opened the run (which clears a killed run's
    #      temporaries) before any resumes, and sees the same finished set before any writes.
    #      The main process locks the folder for the group: a second run on it is refused at once.
    with processes.main_process_first():
        run = open_run(model, images, Path(out), config, allow_pickle=allow_pickle, model_config=model_config,
                       loras=loras, embeddings=embeddings, sign_key=sign_key, say=say, device=device,
                       lock=processes.is_main_process)
    try:
        return _certify_opened(run, processes, config, say, started, tracker, policy)
    finally:
        if run.lock is not None:
            run.lock.release()


def _certify_opened(run: Run, processes, config: VerifierConfig, say, started: float, tracker, policy) -> list[dict]:
    """Steps 1-7 of ``certify`` once the run is open (and its folder locked)."""
    processes.wait_for_everyone()
    certificates = run.resume(say)
    processes.wait_for_everyone()
    # 2-6. Certify this process's share of the rest, batch by batch.
    share = run.todo[processes.process_index :: processes.num_processes]
    tracker = tracker or RunProgress()
    tracker.start(total=len(certificates) + len(share), done=len(certificates))
    try:
        for first in range(0, len(share), config.batch_size):
            batch = share[first : first + config.batch_size]
            for certificate in certify_batch(run, batch, tracker):
                certificates[certificate["image"]["id"]] = certificate
                say(f"{certificate['image']['id']}: {certificate['verdict']} (error ratio "
                    f"{_number(certificate['prediction_error']['ratio'])}, "
                    f"{certificate['conditions']['probability']['rate']:.2f} replication rate)")
            tracker.finished(len(batch))
    finally:
        tracker.close()
    # 7. Once every process has finished, the main process writes the run's summary and report.
    processes.wait_for_everyone()
    if processes.num_processes > 1:
        certificates = run.collect()
    return finish_run(run, certificates, time.time() - started, write=processes.is_main_process, policy=policy)


def _processes(device: str):
    """This process's place among those ``accelerate launch`` started (one process without it).

    Processes that compute on the CPU talk over gloo: accelerate picks its CPU backend only when told.
    """
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or (device == "auto" and not torch.cuda.is_available()))


def _rank_prefixed(say: Callable[[str], None], processes) -> Callable[[str], None]:
    if processes.num_processes == 1:
        return say
    return lambda message: say(f"[process {processes.process_index + 1}/{processes.num_processes}] {message}")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@dataclass
class Run:
    """Everything a certification run shares across its batches."""

    config: VerifierConfig
    out: Path
    loaded: ModelAdapter
    metric: object
    thresholds: Thresholds
    protected: list[ProtectedImage]
    keys: dict[str, str]
    record: "RunRecord"
    signer: object | None
    empty: Conditioning
    space: object
    todo: list[ProtectedImage]
    window_metric: WindowSSIM  # the part-level windows of stage 5d
    lock: RunFolderLock | None  # held by the process that writes the folder's run files (the main one)

    def resume(self, say: Callable[[str], None]) -> dict[str, dict]:
        """Certificates in ``out`` that may be reused; what is left goes to ``todo``."""
        finished: dict[str, dict] = {}
        self.todo = []
        for image in self.protected:
            certificate, why = reusable_certificate(self.out, image.id, self.keys[image.id],
                                                    lambda c: redecide(c).verdict)
            if certificate is None:
                if why != "not certified yet":
                    say(f"{image.id}: redoing: {why}")
                self.todo.append(image)
                continue
            finished[image.id] = certificate
            path = self.out / f"{image.id}.json"
            if self.signer is not None and not signature_holds(self.signer.public_key(), path)[0]:
                sign_file(self.signer, path)  # checked above; a kill may have come before its signature
        if finished:
            say(f"resuming: {len(finished)} images already certified in {self.out}")
        return finished

    def collect(self) -> dict[str, dict]:
        """Every image's certificate as written to ``out`` (by any process), checked as a resume checks it."""
        certificates = {}
        for image in self.protected:
            certificate, why = reusable_certificate(self.out, image.id, self.keys[image.id],
                                                    lambda c: redecide(c).verdict)
            if certificate is None:
                raise RuntimeError(f"{image.id}: no usable certificate in {self.out} after every process "
                                   f"finished ({why}); run the same command again to resume")
            certificates[image.id] = certificate
        return certificates


def open_run(model, images, out: Path, config: VerifierConfig, *, allow_pickle: bool, model_config,
             sign_key, say: Callable[[str], None], device: str | None = None, lock: bool = True,
             loras: Sequence[LoraSpec] = (), embeddings: Sequence[EmbeddingSpec] = ()) -> Run:
    """Steps 0-1: check every input and ``out`` before loading anything, lock ``out`` (with ``lock``), load the
    model, claim ``out``."""
    signer = load_private_key(sign_key) if sign_key is not None else None
    check_output_path(out)  # first: the inputs are looked for outside it
    protected = collect_images(list(images), exclude=out)
    check_images(protected)
    prepare_output_folder(out, clean=False)
    held = RunFolderLock(out) if lock else None
    if held is not None:
        clean_temporaries(out)
    try:
        return _open_locked(model, protected, out, config, allow_pickle=allow_pickle, model_config=model_config,
                            loras=loras, embeddings=embeddings, signer=signer, say=say, device=device, lock=held)
    except BaseException:
        if held is not None:
            held.release()
        raise


def _open_locked(model, protected: list[ProtectedImage], out: Path, config: VerifierConfig, *, allow_pickle: bool,
                 model_config, loras: Sequence[LoraSpec], embeddings: Sequence[EmbeddingSpec], signer,
                 say: Callable[[str], None], device: str | None, lock) -> Run:
    metric = SIMILARITY_METRICS.get(config.similarity)(config)
    weights_sha = (metric.weights or {}).get("sha256")
    calibration_file = read_calibration(config.calibration) if config.calibration else None

    loaded = model if isinstance(model, ModelAdapter) else load_model(
        model, device=device or config.device, dtype=config.dtype, allow_pickle=allow_pickle, model_config=model_config,
        loras=loras, embeddings=embeddings)
    calibration = check_calibration(config.calibration, *calibration_file, loaded.fingerprint, config, weights_sha) \
        if calibration_file else None
    config_values = run_config_values(config, weights_sha, (calibration or {}).get("sha256"))
    identity = {"model_fingerprint": loaded.fingerprint, "config": config_values, "verifier": _verifier_version()}
    restored = restore_run_record(out, identity) if lock is not None else 0
    if restored:
        say(f"{RUN_FILE} was missing: written again from the {restored} certificate(s) in {out}, which all record "
            "this run's model, config and verifier version")
    claim_run_folder(out, identity)
    keys = {image.id: run_key(loaded.fingerprint, config_values, image.sha256, _verifier_version(), weights_sha,
                              _context(image))
            for image in protected}
    resolution = config.resolution or loaded.resolution
    loaded.configure_objective(config.error_form, config.flow_timestep_density, resolution)
    if config.gradient_checkpointing:
        loaded.denoiser().enable_gradient_checkpointing()
    else:
        loaded.denoiser().disable_gradient_checkpointing()
    loaded.autocast = autocast_dtype(config.autocast)
    rows = row_budget(loaded, config.denoiser_batch)  # after the precision: autocast halves what a row keeps
    loaded.rows_per_call = rows.rows
    say(f"model {loaded.source} ({loaded.family}, {loaded.kind}, {loaded.prediction_type}, {resolution}px) on "
        f"{loaded.device}; {len(protected)} image{'s' if len(protected) != 1 else ''}; {rows.rows} rows per denoiser "
        f"call ({rows.source})")
    model_record = loaded.describe()
    distillation = model_record["distillation"]
    if distillation["few_step"]:
        say(f"note: a few-step distilled model ({'; '.join(distillation['evidence'])}); what its verdicts cover is "
            "in each certificate's model.distillation.scope")
    empty = loaded.empty_conditioning()
    record = RunRecord(
        model=model_record, config=config.to_dict(), environment=_environment(loaded),
        seeds=seed_sequence(config.seed, sampling_looks(config.generations, config.sampling_doublings)[-1]),
        calibration=calibration,
        grid=loaded.objective.grid(config.error_timesteps), resolution=resolution,
        scheduler=loaded.scheduler_record(),
        budget={"inversion_space": config.inversion_space, "inversion_tokens": config.inversion_tokens,
                "inversion_steps": config.inversion_steps, "inversion_max_steps": config.inversion_step_limit(),
                "inversion_noise_draws": config.inversion_noise_draws,
                "restarts": 1, "generations_per_scale": config.generations,
                "sampling_looks": sampling_looks(config.generations, config.sampling_doublings),
                "guidance_scales": list(config.guidance_scales), "sampling_steps": config.sampling_steps,
                "denoiser_evaluations": denoiser_evaluations(config, cfg_rows=loaded.cfg_rows)},
        witness_tensors=sorted(empty.tensors()),
        generation_kwargs={key: list(value) for key, value in loaded.generation_kwargs(resolution, resolution).items()},
        guidance_keyword=next(iter(loaded.guidance_kwargs(1.0))))
    thresholds = resolve_thresholds(config.similarity_threshold, config.existence_max_error_ratio,
                                    metric.default_threshold, metric.threshold_source, calibration)
    return Run(config=config, out=out, loaded=loaded, metric=metric, thresholds=thresholds,
               protected=protected, keys=keys, record=record, signer=signer,
               empty=empty,
               space=INVERSION_SPACES.get(config.inversion_space)(loaded, config.inversion_tokens),
               todo=list(protected), window_metric=WindowSSIM(resolution), lock=lock)


def certify_batch(run: Run, batch: list[ProtectedImage], tracker: RunProgress | None = None) -> list[dict]:
    """Steps 2-6 for one batch; each certificate is written (after its witness) before it is returned."""
    tracker = tracker or RunProgress()
    config, model, metric = run.config, run.loaded, run.metric
    seeds, resolution, empty = run.record.seeds, run.record.resolution, run.empty
    clock = {"batch_size": len(batch)}
    tick = time.time()
    # 2. Encode.
    pixels = [prepare_image(image.path, resolution) for image in batch]
    z0 = model.encode_images(pixels)
    clock["encode_s"] = time.time() - tick
    # 3. The prediction error under the empty prompt: the yardstick of the existence ratio and of
    #    inversion's checks.
    tick = time.time()
    empty_error = prediction_error(model, z0, empty.expand(len(batch)),
                                   timesteps=config.error_timesteps, noise_draws=config.error_noise_draws)
    clock["error_s"] = time.time() - tick
    framed_metric = FramedSimilarity(metric)  # the run's metric, against an OwnerImage where the target is one
    # 4-5c. Invert, generate, control and decide at the owner's framing, every noise level.
    looks = sampling_looks(config.generations, config.sampling_doublings)
    first = _search(run, batch, z0, empty_error, pixels, metric, tracker, clock)
    # 5f. Where that reproduced nothing, the framing search: coarse noise levels, the owner's image framed best.
    searched = [index for index in range(len(batch))
                if config.framing_search and reproduced_nothing(first.decisions[index].verdict,
                                                                first.decisions[index].conditions["similarity"]["replications"])]
    #     It searches the owner's image cut where a screen over candidate framings says the model knows it best
    #     (verifier.screen), inverted at the noisiest levels; its generations are scored against the whole image.
    framed = screened = None
    if searched:
        owners = [OwnerImage.open(batch[index].path, FRAMING_BOUNDS, resolution) for index in searched]
        tick = time.time()
        tracker.stage("screen", config.framing_steps, "step")
        screened = screen(model, run.space, owners, [f"framing:{batch[index].sha256}" for index in searched],
                          empty=empty, config=config, noise_floor=FRAMING_NOISE_FLOOR, resolution=resolution,
                          on_step=tracker.advance)
        clock["framing_screen_s"] = time.time() - tick
        framed = _search(run, [batch[index] for index in searched], screened.z0, screened.empty_errors, owners,
                         framed_metric, tracker, clock, noise_floor=FRAMING_NOISE_FLOOR, owners=owners, name="framing",
                         weights=screened.weights, inversion=screened.inversion)
    # 5g. Where it replicated nothing: the aligned search. The framing witness's closest generation points
    #     near the memorized image, blurred; refine its framing to a fraction of a pixel, cut the owner's image
    #     there and search the cut as the owner's framing was searched (every noise level, its own twin).
    tick = time.time()
    aligned, aligned_framings, cuts = None, {}, {}
    for row in range(len(searched)):
        if aligned_search_runs(framed.summary(row)):
            closest = framed.row(row).closest[2]
            _, aligned_framings[row] = refine(owners[row], closest, framed_metric.framings(closest[None], owners[row])[0])
            cuts[row] = owners[row].cut(aligned_framings[row], resolution)  # None: no overlap at this resolution
    align_rows = [row for row, cut in cuts.items() if cut is not None]
    cuts = [cuts[row] for row in align_rows]
    if align_rows:
        z0_cut = model.encode_images([cut.pixels for cut in cuts])
        covered = latent_weights(cuts, z0_cut)  # every error on a cut counts the owner's pixels only
        cut_empty = prediction_error(model, z0_cut, empty.expand(len(align_rows)), timesteps=config.error_timesteps,
                                     noise_draws=config.error_noise_draws, weights=covered)
        clock["aligned_error_s"] = time.time() - tick
        aligned = _search(run, [batch[searched[row]] for row in align_rows], z0_cut, cut_empty, cuts, framed_metric,
                          tracker, clock, name="aligned", weights=covered)
    # The witness: the first search's, else the first later search's that stands (framing.witness_search).
    align_at = {row: position for position, row in enumerate(align_rows)}  # framing-search row -> aligned row
    rows = {index: row for row, index in enumerate(searched)}
    witnesses, chosen_searches = [], []
    for index in range(len(batch)):
        row = rows.get(index)
        chosen = "owner's framing" if row is None else witness_search(
            framed.summary(row), aligned.summary(align_at[row]) if row in align_at else None)
        chosen_searches.append(chosen)
        search, position = {"owner's framing": (first, index), "framing search": (framed, row),
                            ALIGNED_SEARCH: (aligned, align_at.get(row))}[chosen]
        witnesses.append(search.row(position))
    decisions = [witness.decision for witness in witnesses]
    # 5d. Where the whole image was not reproduced, a part of it may be: the best window against the twin's.
    tick = time.time()
    window_scores = [witness.window_scores for witness in witnesses]
    compared = _pixels_of([witness.target for witness in witnesses])  # the pixels each witness was scored against
    part_controls = _part_controls(run, batch, compared, window_scores, decisions, seeds[:looks[0]])
    parts = [part_record(decisions[index].verdict, window_scores[index], run.window_metric, looks[0],
                         config.confidence, None if index not in part_controls else
                         {"guidance_scale": part_controls[index].guidance_scale,
                          "scores": part_controls[index].scores})
             for index in range(len(batch))]
    clock["parts_s"] = time.time() - tick
    # 5e. The owner's prompts (where the manifest lists some) and, where the witness reproduced its image,
    #     the witness decoded into readable text: each tested like the witness (one look), against the owner's
    #     image framed best where the witness came from the framing search.
    tick = time.time()
    owner_prompts = [image.context.prompts() if image.context else [] for image in batch]
    readable = [decoded_prompts(model, witness.variables)
                if config.decode_witness and witness.decision.verdict in REPRODUCED_VERDICTS else []
                for witness in witnesses]
    to_test = [owner + [("decoded", text) for text in decoded] for owner, decoded in zip(owner_prompts, readable)]
    tracker.stage("prompts", sum(map(len, to_test)), "prompt")
    tested = prompt_tests(model, z0, [witness.target for witness in witnesses], empty, empty_error, to_test,
                          framed_metric, threshold=run.thresholds.similarity, seeds=seeds[:looks[0]],
                          scales=config.guidance_scales, steps=config.sampling_steps, resolution=resolution,
                          timesteps=config.error_timesteps, noise_draws=config.error_noise_draws,
                          confidence=config.confidence, min_rate=config.probability_min_rate)
    tracker.advance(sum(map(len, to_test)))
    tracker.end_stage()
    clock["prompts_s"] = time.time() - tick
    timings = {key: (round(value / len(batch), 4) if key.endswith("_s") else value)
               for key, value in clock.items()} | {"note": "seconds: this image's share of its batch"}
    # 6. Certify each image: witness files and closest generation first, the certificate last.
    written = []
    for index, image in enumerate(batch):
        witness = witnesses[index]
        control, decision = witness.control, witness.decision
        prompts = [record for record in tested[index] if record["kind"] != "decoded"]
        decoded = [record for record in tested[index] if record["kind"] == "decoded"]
        best_scale, best_seed, best_generation = witness.closest
        atomic_write_bytes(run.out / f"{image.id}.closest.png", png_bytes(best_generation))
        sheet = sheet_png(witness.tiles, list(config.guidance_scales), tile_size(resolution))
        atomic_write_bytes(run.out / f"{image.id}.generations.png", sheet)
        image_seeds = seeds[:max(witness.used.values())]
        metadata = {"space": config.inversion_space, "seeds": image_seeds, "image_sha256": image.sha256}
        witness_sha = write_witness(run.out / f"{image.id}.witness.safetensors", witness.conditioning, empty,
                                    witness.variables, metadata)
        control_witness = None if control is None else {
            "file": f"{image.id}.control.safetensors",
            "sha256": write_witness(run.out / f"{image.id}.control.safetensors", control.witness, empty,
                                    control.variables, metadata | {"control": TWIN})}
        if index in part_controls:
            twin = part_controls[index]
            parts[index]["control"]["witness"] = {
                "file": f"{image.id}.part-control.safetensors",
                "sha256": write_witness(run.out / f"{image.id}.part-control.safetensors", twin.witness, empty,
                                        twin.variables, metadata | {"control": f"{TWIN}, for the part check"})}
        row = rows.get(index)
        align_row = align_at.get(row)
        aligned_framing = None if align_row is None else aligned_framings[row].record(owners[row].side)
        framing = framing_record(
            searched=row is not None, enabled=config.framing_search, mirror_enabled=config.framing_mirror,
            scales_enabled=config.framing_scales,
            first=first.summary(index), framed=None if row is None else framed.summary(row),
            aligned=None if align_row is None else aligned.summary(align_row), aligned_framing=aligned_framing,
            closest_framing=aligned_framing if chosen_searches[index] == ALIGNED_SEARCH else
            witness.closest_framing(framed_metric),
            screen=None if row is None else screen_record(screened.records[row], framed.row(row).control),
            evaluations=None if row is None else _screened_evaluations(
                framed.row(row).evaluations(config, looks, model.cfg_rows), screened.records[row], config),
            aligned_evaluations=None if align_row is None else aligned.row(align_row).evaluations(config, looks, model.cfg_rows))
        certificate = _certificate(
            run.record, image, decision, witness_sha, image_seeds, best_scale, best_seed, timings, run.keys[image.id],
            error={"inverted": witness.errors, "empty": witness.empty_error, "ratio": witness.ratio,
                   "loss_first_last": witness.loss_first_last, "noise_draws": config.error_noise_draws,
                   "inversion_steps": witness.steps, "checks": witness.checks},
            control_witness=control_witness, sheet={
                "file": f"{image.id}.generations.png", "sha256": hashlib.sha256(sheet).hexdigest(),
                "tile": tile_size(resolution), "layout": SHEET_LAYOUT},
            spent=first.row(index).evaluations(config, looks, model.cfg_rows)["witness"],
            control_cost=witness.evaluations(config, looks, model.cfg_rows)["control"],
            part=parts[index], part_control_cost=None if index not in part_controls else denoiser_evaluations(
                config, {part_controls[index].guidance_scale: looks[0]}, part_controls[index].inversion_steps,
                part_controls[index].checks, cfg_rows=model.cfg_rows),
            prompts=prompts, prompt_cost=prompt_evaluations(config, len(tested[index]), model.cfg_rows),
            readable={"method": READABLE_METHOD, "prompts": decoded,
                      "statement": readable_statement(decision.verdict, config.inversion_space, decoded,
                                                     config.decode_witness)},
            framing=framing)
        atomic_write_json(run.out / f"{image.id}.json", certificate)
        if run.signer is not None:
            sign_file(run.signer, run.out / f"{image.id}.json")
        written.append(certificate)
    return written


@dataclass
class WitnessRow:
    """One image's witness from one search, with everything the certificate records of it."""

    conditioning: Conditioning
    variables: dict[str, torch.Tensor]
    errors: torch.Tensor  # the grid error under the witness, on the inverted image (the owner's, or a cut of it)
    empty_error: torch.Tensor  # the grid error under the empty prompt, on the same image
    ratio: float
    loss_first_last: list
    steps: int
    checks: list[tuple[int, float]]
    scores: dict[float, np.ndarray]
    closest: tuple[float, int, np.ndarray]
    tiles: dict[float, list[np.ndarray]]
    window_scores: dict[float, np.ndarray]  # every generation's window scores at the owner's framing (stage 5d)
    used: dict[float, int]
    control: ControlRun | None
    decision: object
    target: object  # what the metric compared generations with: the prepared pixels, or the OwnerImage
    framed: bool
    empty_measured: bool  # whether this search measured its empty-prompt error (the framing search reuses one)

    def closest_framing(self, framed_metric) -> dict | None:
        """The framing of the owner's image that the closest generation matches best (framing-search witnesses)."""
        if not self.framed:
            return None
        framing = framed_metric.framings(self.closest[2][None], self.target)[0]
        return framing.record(self.target.side)

    def evaluations(self, config: VerifierConfig, looks: list[int], cfg_rows: Callable[[float], int]) -> dict:
        control = self.control
        return {"witness": denoiser_evaluations(config, self.used, self.steps, len(self.checks), cfg_rows=cfg_rows,
                                                empty_pass=self.empty_measured),
                "control": None if control is None else _with_screen(denoiser_evaluations(
                    config, {control.guidance_scale: looks[0]}, control.inversion_steps, control.checks,
                    cfg_rows=cfg_rows), control.screen, config)}


@dataclass
class Search:
    """What one witness search (invert, sample, control, decide) measured for a batch."""

    inversion: object
    ratios: list[float]
    losses: list[list]
    sampled: object
    controls: dict[int, ControlRun]
    decisions: list
    targets: list
    framed: bool
    empty_errors: torch.Tensor
    empty_measured: bool

    def summary(self, index: int) -> dict:
        """What the certificate's ``framing`` block records of this search for one image."""
        return search_summary(self.decisions[index], finite_or_none(self.ratios[index]))

    def row(self, index: int) -> WitnessRow:
        inversion, sampled = self.inversion, self.sampled
        return WitnessRow(
            conditioning=inversion.conditioning[index],
            variables={name: value[index] for name, value in inversion.variables.items()},
            errors=inversion.errors[index], empty_error=self.empty_errors[index], ratio=self.ratios[index], loss_first_last=self.losses[index],
            steps=inversion.steps[index], checks=inversion.checks[index], scores=sampled.scores[index],
            closest=sampled.closest[index], tiles=sampled.tiles[index], window_scores=sampled.window_scores[index],
            used=sampled.seeds_used(index),
            control=self.controls.get(index), decision=self.decisions[index], target=self.targets[index],
            framed=self.framed, empty_measured=self.empty_measured)


def _search(run: Run, batch: list[ProtectedImage], z0: torch.Tensor, empty_error: torch.Tensor, targets: list,
            metric, tracker: RunProgress, clock: dict, *, noise_floor: float = 0.0,
            owners: list | None = None, name: str = "", weights: torch.Tensor | None = None,
            empty_measured: bool = True, inversion: Inversion | None = None) -> Search:
    """Steps 4-5c for a batch: invert, generate and score against ``targets`` with ``metric``, control, decide.

    The first search inverts at every noise level and compares with the prepared pixels; the framing
    search (``verifier.framing``) inverts at the noisiest levels only, a fixed number of steps, and
    compares with each image's ``OwnerImage`` framed best (its control likewise). ``name`` keeps a search's
    timings and random streams apart from the others' (the first search's are unprefixed). ``weights``: the
    latent cells each image's errors count (the aligned search's cuts: ``alignment.Cut``); ``empty_measured``
    False where ``empty_error`` is another search's (its cost is not this one's); ``inversion``: the witnesses
    where another stage inverted them (the framing search's screen), step 4 then skipped."""
    config, model, empty = run.config, run.loaded, run.empty
    seeds, resolution = run.record.seeds, run.record.resolution
    prefix = f"{name}_" if name else ""
    # 4. Invert, each image until its error ratio levels off (the framing search: a fixed budget); its last
    #    check is the witness's error.
    tick = time.time()
    screened = inversion is not None  # the framing search's: its control's twin is screened likewise
    if inversion is None:
        tracker.stage("invert", config.inversion_steps, "step")
        inversion = invert(model, run.space, z0, [f"{name}:{image.sha256}" if name else image.sha256 for image in batch],
                           schedule=InversionSchedule.of(config, fixed=bool(noise_floor)),
                           empty_errors=empty_error.mean(dim=1), learning_rate=config.inversion_learning_rate,
                           noise_draws=config.inversion_noise_draws, seed=config.seed, on_step=tracker.advance,
                           noise_floor=noise_floor, weights=weights)
        clock[f"{prefix}invert_s"] = time.time() - tick
    ratios = [float(inversion.errors[index].mean() / empty_error[index].mean()) for index in range(len(batch))]
    # 5. Generate from the witness and score each generation against its image; double the seeds where
    #    the first look leaves the probability condition undecided.
    tick = time.time()
    looks = sampling_looks(config.generations, config.sampling_doublings)

    def extend(index: int, scores_so_far: dict[float, np.ndarray], look: int) -> tuple[float, ...]:
        return scales_to_extend(scores_so_far, look, existence_holds=ratios[index] <= run.thresholds.existence,
                                metric=metric, threshold=run.thresholds.similarity,
                                min_rate=config.probability_min_rate, confidence=config.confidence, looks=looks,
                                replication_bound=config.replication_bound)

    tracker.stage("generate", len(batch) * len(config.guidance_scales) * looks[0], "generation")
    sampled = sample(model, inversion.conditioning, empty, targets, metric, seeds=seeds, looks=looks,
                     scales=config.guidance_scales, steps=config.sampling_steps, resolution=resolution, extend=extend,
                     window_metric=run.window_metric, window_targets=_pixels_of(targets),
                     on_generated=tracker.advance)
    clock[f"{prefix}generate_s"] = time.time() - tick
    # 5b. Where a witness replicates its image but the error ratio stayed high, run the control.
    tick = time.time()
    controls = _controls(model, run.space, metric, run.thresholds, batch, _pixels_of(targets), sampled.scores, ratios,
                         empty, seeds[:looks[0]], config, resolution, owners=owners, noise_floor=noise_floor,
                         screened=screened)
    clock[f"{prefix}control_s"] = time.time() - tick
    # 5c. Decide each image from its witness's numbers.
    losses = [[finite_or_none(inversion.loss_curves[index][0]), finite_or_none(inversion.loss_curves[index][-1])]
              for index in range(len(batch))]
    decisions = [_decide(run, ratios[index], sampled.scores[index], losses[index], controls.get(index), looks)
                 for index in range(len(batch))]
    return Search(inversion=inversion, ratios=ratios, losses=losses, sampled=sampled, controls=controls,
                  decisions=decisions, targets=targets, framed=bool(noise_floor), empty_errors=empty_error,
                  empty_measured=empty_measured)


def _pixels_of(targets: list) -> list:
    """The prepared pixels of each target (an ``OwnerImage`` carries its own; a ``Cut`` stays one, so that what is
    compared with it is its covered part)."""
    return [target.pixels if isinstance(target, OwnerImage) else target for target in targets]


def finish_run(run: Run, certificates: dict[str, dict], seconds: float, write: bool = True, policy=None) -> list[dict]:
    """Step 7: the summary (signed with the run's key, if any) and the report; the certificates in input order.

    With ``write`` False (a process other than the main one) nothing is written."""
    ordered = [certificates[image.id] for image in run.protected]
    if not write:
        return ordered
    record = summary(run.out, ordered, run.record.model, run.record.config, seconds, policy)
    atomic_write_json(run.out / SUMMARY_FILE, record)
    if run.signer is not None:
        sign_file(run.signer, run.out / SUMMARY_FILE)
    image_pngs = {image.id: png_bytes(prepare_image(image.path, run.record.resolution)) for image in run.protected}
    atomic_write_bytes(run.out / REPORT_FILE, report_html(run.out, record, ordered, image_pngs,
                                                          f"verifier report: {run.loaded.source}").encode())
    return ordered


def _controls(model: ModelAdapter, space, metric, thresholds: Thresholds, batch, pixels, scores, ratios,
              empty: Conditioning, seeds, config, resolution, owners: list | None = None,
              noise_floor: float = 0.0, screened: bool = False) -> dict[int, "ControlRun"]:
    """The never-seen twin control for the images of a batch where it can change the verdict."""
    wanted = []
    for index in range(len(batch)):
        per_scale = {scale: int((replicated(metric, values, thresholds.similarity) & np.isfinite(values)).sum())
                     for scale, values in scores[index].items()}
        if needs_control(ratios[index], sum(per_scale.values()), thresholds.existence):
            best = max(sorted(per_scale), key=lambda scale: per_scale[scale])  # most replications, lowest scale first
            wanted.append((index, best))
    if not wanted:
        return {}
    runs = run_controls(model, space, metric, [(pixels[i], batch[i].sha256, scale) for i, scale in wanted],
                        empty=empty, seeds=seeds, config=config, resolution=resolution,
                        owners=None if owners is None else [owners[i] for i, _ in wanted], noise_floor=noise_floor,
                        screened=screened)
    return {index: run for (index, _), run in zip(wanted, runs)}


def _part_controls(run: Run, batch, pixels, window_scores, decisions, seeds) -> dict[int, "ControlRun"]:
    """The never-seen twin, sampled at the candidate's scale, for each image whose best window is a candidate."""
    wanted = []
    for index in range(len(batch)):
        best = best_window(window_scores[index], run.window_metric, len(seeds))
        if is_candidate(decisions[index].verdict, best, run.config.confidence):
            wanted.append((index, best["guidance_scale"]))
    if not wanted:
        return {}
    runs = run_controls(run.loaded, run.space, run.window_metric,
                        [(pixels[i], batch[i].sha256, scale) for i, scale in wanted], empty=run.empty, seeds=seeds,
                        config=run.config, resolution=run.record.resolution)
    return {index: control for (index, _), control in zip(wanted, runs)}


@dataclass(frozen=True)
class RunRecord:
    """What every certificate of a run shares."""

    model: dict
    config: dict
    environment: dict
    seeds: list[int]
    grid: list[int | float]
    resolution: int
    scheduler: dict
    budget: dict
    calibration: dict | None
    witness_tensors: list[str]  # the stock pipeline keywords a witness file holds
    generation_kwargs: dict  # the family's further pipeline keywords (SDXL's sizes)
    guidance_keyword: str  # the pipeline keyword a guidance scale goes to (Flux schnell: true_cfg_scale)


def _decide(run: Run, ratio: float, scores: dict[float, np.ndarray], loss_first_last: list, control, looks):
    """One image's decision from its witness's numbers (and its control's, where one ran)."""
    config = run.config
    return decide(
        error_ratio=ratio, scores_by_scale=scores, metric=run.metric,
        threshold=run.thresholds.similarity, max_error_ratio=run.thresholds.existence,
        min_rate=config.probability_min_rate, confidence=config.confidence,
        problems=inversion_problems(loss_first_last),
        control=None if control is None else {"guidance_scale": control.guidance_scale,
                                              "scores": list(control.scores), "error_ratio": control.error_ratio},
        looks=looks, replication_bound=config.replication_bound, existence_source=run.thresholds.existence_source,
        similarity_source=run.thresholds.similarity_source)


def prompt_evaluations(config: VerifierConfig, prompts: int, cfg_rows: Callable[[float], int]) -> int:
    """Denoiser evaluations the tested prompts (the owner's and the decoded witness's) cost one image: per
    prompt, one pass over the error grid and the first look at every guidance scale (``cfg_rows`` per step)."""
    per_prompt = config.error_timesteps * config.error_noise_draws + sum(
        config.generations * config.sampling_steps * cfg_rows(scale) for scale in config.guidance_scales)
    return prompts * per_prompt


def _context(image: ProtectedImage) -> dict | None:
    return image.context.to_dict() if image.context else None


def _certificate(run: RunRecord, image: ProtectedImage, decision, witness_sha: str, seeds: list[int],
                 best_scale: float, best_seed: int, timings: dict, key: str, error: dict,
                 control_witness: dict | None, sheet: dict, part: dict, part_control_cost: dict | None, spent: dict, control_cost: dict | None, prompts: list[dict], prompt_cost: int, readable: dict, framing: dict) -> dict:
    """One image's certificate, validated against the schema."""
    context = _context(image)
    return validated("certificate", {
        "schema": certificate_tag(),
        "verdict": decision.verdict,
        "verdict_reason": decision.reason,
        "image": {"id": image.id, "path": str(image.path), "sha256": image.sha256,
                  "preprocessing": {"policy": PREPROCESSING, "resolution": run.resolution}},
        "model": run.model,
        "conditions": decision.conditions,
        "prediction_error": {
            "timesteps": run.grid, "noise_draws": error["noise_draws"],
            "inverted": [finite_or_none(v) for v in error["inverted"]],
            "empty": [finite_or_none(v) for v in error["empty"]],
            "inverted_mean": finite_or_none(error["inverted"].mean()),
            "empty_mean": finite_or_none(error["empty"].mean()),
            "ratio": finite_or_none(error["ratio"]),
            "inversion_loss_first_last": error["loss_first_last"],
            "inversion_steps": error["inversion_steps"],
            "inversion_checks": [{"step": step, "ratio": finite_or_none(ratio)} for step, ratio in error["checks"]],
        },
        "witness": {
            "file": f"{image.id}.witness.safetensors", "sha256": witness_sha, "tensors": run.witness_tensors,
            "negative_tensors": [f"negative_{name}" for name in run.witness_tensors],
            "negative": "the empty prompt's conditioning",
            "pipeline_kwargs": run.generation_kwargs,
            "seeds": seeds, "generator": "torch.Generator('cpu').manual_seed(seed), one per image",
            "guidance_scales": run.config["guidance_scales"], "num_inference_steps": run.config["sampling_steps"],
            "height": run.resolution, "width": run.resolution, "scheduler": run.scheduler,
            "closest_generation": f"{image.id}.closest.png",
            "closest_seed": best_seed, "closest_guidance_scale": best_scale, "generations_sheet": sheet,
            "guidance_keyword": run.guidance_keyword,
        },
        "control_witness": control_witness,
        "part_replication": part,
        "context": context,
        "prompts": prompts,
        "classification": classify(decision.verdict, context, prompts),
        "readable_prompt": readable,
        "framing": framing,
        "calibration": run.calibration,
        "budget": run.budget | {"denoiser_evaluations_spent": spent, "control_denoiser_evaluations": control_cost,
                                "part_control_denoiser_evaluations": part_control_cost,
                                "prompt_denoiser_evaluations": prompt_cost,
                                "framing_denoiser_evaluations": framing["denoiser_evaluations"],
                                "aligned_denoiser_evaluations": framing["aligned_denoiser_evaluations"]},
        "config": run.config,
        "environment": run.environment,
        "timings": timings,
        "run_key": key,
    })
