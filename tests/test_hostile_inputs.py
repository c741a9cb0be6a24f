"""Hostile input, measured: every kind of bad input gets its documented exit code and a message that
names it; nothing ends in a traceback, and nothing exits 1 ("memorization found") by accident.

Exit codes: 2 usage error (images, manifests, config, output folder), 3 runtime error (model, metric
weights, anything unexpected), 130 interrupted.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers.images import textured
from verifier.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FAST = ["--inversion-steps", "1", "--framing-steps", "1", "--generations", "1", "--device", "cpu"]


# --- builders of bad inputs: each takes the case folder and returns what to put on the command line -----

def _image(folder: Path, name: str = "good.png", seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(textured(seed)).save(folder / name)
    return folder / name


def _file(folder: Path, name: str, content: bytes | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _bomb_png(folder: Path) -> Path:
    """A PNG header that declares 100000 x 100000 pixels: Pillow refuses it as a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return _file(folder, "bomb.png", b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                 chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def _float_tiff(folder: Path, values: np.ndarray, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.float32), mode="F").save(folder / name)
    return folder / name


def _truncated_jpeg(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(textured(1, size=64)).save(folder / "cut.jpg", quality=95)
    data = (folder / "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 3])
    return folder / "cut.jpg"


def _fifo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "pipe.png")
    return folder / "pipe.png"


def _model_copy(tiny: Path, folder: Path, change=None) -> Path:
    target = folder / "model"
    shutil.copytree(tiny, target)
    if change:
        change(target)
    return target


def _edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _previous_run(tiny: Path, folder: Path) -> list[str]:
    """--out already holds a run with seed 0; this one asks for seed 1."""
    image = _image(folder / "images")
    result = CliRunner().invoke(main, ["certify", str(tiny), str(image), "--out", str(folder / "out"), *FAST])
    assert result.exit_code in (0, 1), result.output
    return [str(tiny), str(image), "--out", str(folder / "out"), *FAST, "--seed", "1"]


def _animated(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frames = [Image.new("RGB", (24, 24), (40 * i, 90, 160)) for i in range(3)]
    frames[0].save(folder / name, save_all=True, append_images=frames[1:])
    return folder / name


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _link(folder: Path, name: str, target: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).symlink_to(target)
    return folder / name


def certify_args(images: list, tiny: Path, folder: Path, *extra) -> list[str]:
    return ["certify", str(tiny), *map(str, images), "--out", str(folder / "out"), *FAST, *extra]


# Each case: (name, build(tiny_model, folder) -> argv, expected exit code, regex the output must contain).
CASES = [
    # Images and manifests (exit 2).
    ("missing image file", lambda m, d: certify_args([d / "nope.png"], m, d), 2, r"'.*nope.png' does not exist"),
    ("empty folder", lambda m, d: (d / "empty").mkdir() or certify_args([d / "empty"], m, d), 2, "holds no image"),
    ("text file", lambda m, d: certify_args([_file(d, "notes.txt", "hi")], m, d), 2, "is neither an image"),
    ("csv without path column", lambda m, d: certify_args([_file(d, "l.csv", "file\nx.png\n")], m, d), 2,
     "needs a 'path' column"),
    ("header-only csv", lambda m, d: certify_args([_file(d, "l.csv", "path,id\n")], m, d), 2, "lists no image"),
    ("empty jsonl", lambda m, d: certify_args([_file(d, "l.jsonl", "")], m, d), 2, "lists no image"),
    ("blank-lines jsonl", lambda m, d: certify_args([_file(d, "l.jsonl", "\n\n")], m, d), 2, "lists no image"),
    ("jsonl not json", lambda m, d: certify_args([_file(d, "l.jsonl", "{half\n")], m, d), 2, "line 1 is not JSON"),
    ("jsonl line not an object", lambda m, d: certify_args([_file(d, "l.jsonl", "[1, 2]\n")], m, d), 2,
     "needs an object with a 'path' key"),
    ("jsonl path is a number", lambda m, d: certify_args([_file(d, "l.jsonl", '{"path": 7}\n')], m, d), 2,
     "'path' must be a non-empty string, got 7"),
    ("jsonl id is a list", lambda m, d: (_image(d), certify_args(
        [_file(d, "l.jsonl", '{"path": "good.png", "id": [1]}\n')], m, d))[1], 2, "'id' must be a string"),
    ("csv row without path", lambda m, d: certify_args([_file(d, "l.csv", "path,id\n,first\n")], m, d), 2,
     "line 2: 'path' must be a non-empty string"),
    ("jsonl row of 50 MB", lambda m, d: certify_args([_file(d, "l.jsonl", '{"path": "' + "x" * (50 << 20) + '"}\n')],
                                                    m, d), 2, "line 1 is 52,428,812 characters long"),
    ("jsonl path over PATH_MAX", lambda m, d: certify_args([_file(d, "l.jsonl", '{"path": "' + "x" * 5000 + '"}\n')],
                                                           m, d), 2, "line 1: 'path' is 5,000 bytes long"),
    ("csv field over csv's limit", lambda m, d: certify_args(
        [_file(d, "l.csv", "path\ngood.png\n" + "x" * 200_000 + "\n")], m, d), 2, "line 3: field larger than field limit"),
    ("image that is a symlink loop", lambda m, d: certify_args([_link(d, "loop", "loop")], m, d), 2,
     "'.*loop' is a symbolic link that loops"),
    ("manifest row that is a dangling link", lambda m, d: (_link(d, "gone.png", "/nonexistent.png"), certify_args(
        [_file(d, "l.jsonl", '{"path": "gone.png"}\n')], m, d))[1], 2,
     r"'.*gone.png' \(from IMAGES manifest .* line 1\) is a symbolic link to '/nonexistent.png', which does not exist"),
    ("--out a symlink loop", lambda m, d: ["certify", str(m), str(_image(d)), "--out", str(_link(d, "o", "o")), *FAST],
     2, "--out '.*o' is a symbolic link that loops"),
    ("--out a dangling link", lambda m, d: ["certify", str(m), str(_image(d)), "--out",
                                            str(_link(d, "o", str(d / "nowhere" / "o"))), *FAST], 2,
     "--out '.*o' is a symbolic link to '.*nowhere/o', which does not exist"),
    ("model folder linked to itself", lambda m, d: ["certify", str(_link(d, "model", "model")), str(_image(d)),
                                                    "--out", str(d / "out"), *FAST], 3,
     "MODEL '.*model' is a symbolic link that loops"),
    ("animated gif", lambda m, d: certify_args([_animated(d, "anim.gif")], m, d), 2,
     "'.*anim.gif' holds 3 frames \\(animated, or pages\\); verifier certifies still images"),
    ("animated png", lambda m, d: certify_args([_animated(d, "anim.png")], m, d), 2, "'.*anim.png' holds 3 frames"),
    ("latin-1 csv", lambda m, d: certify_args([_file(d, "l.csv", "path,id\nx.png,caf\xe9\n".encode("latin-1"))], m, d),
     2, "is not UTF-8 text"),
    ("csv lists a missing file", lambda m, d: certify_args([_file(d, "l.csv", "path\nmissing.png\n")], m, d), 2,
     r"missing.png' \(from IMAGES manifest .* line 2\) does not exist"),
    ("csv lists a folder", lambda m, d: ((d / "sub").mkdir(parents=True), certify_args(
        [_file(d, "l.csv", "path\nsub\n")], m, d))[1], 2, "is not a regular file"),
    ("fifo given directly", lambda m, d: certify_args([_fifo(d)], m, d), 2, "is not a regular file"),
    ("not an image", lambda m, d: certify_args([_file(d, "fake.png", b"not a png")], m, d), 2,
     "cannot be read as an image"),
    ("zero-byte image", lambda m, d: certify_args([_file(d, "zero.png", b"")], m, d), 2, "cannot be read as an image"),
    ("decompression bomb", lambda m, d: certify_args([_bomb_png(d)], m, d), 2, "decompression bomb"),
    ("truncated jpeg", lambda m, d: certify_args([_truncated_jpeg(d)], m, d), 2, "cannot be read as an image"),
    ("float tiff with nan", lambda m, d: certify_args([_float_tiff(d, np.full((16, 16), np.nan), "nan.tif")], m, d),
     2, "NaN or infinite pixel values"),
    ("negative float tiff", lambda m, d: certify_args([_float_tiff(d, np.full((16, 16), -1.0), "neg.tif")], m, d),
     2, "negative pixel values"),
    ("one file under two ids", lambda m, d: (_image(d), certify_args([_file(
        d, "l.jsonl", '{"path": "good.png", "id": "a"}\n{"path": "good.png", "id": "b"}\n')], m, d))[1], 2,
     "is listed under two ids, 'a' and 'b'"),
    ("two files, one id", lambda m, d: (_image(d, "x.png"), _image(d, "y.png", 1), certify_args([_file(
        d, "l.jsonl", '{"path": "x.png", "id": "same"}\n{"path": "y.png", "id": "same"}\n')], m, d))[2], 2,
     "would share the id 'same'"),
    ("image inside the output folder", lambda m, d: certify_args([_image(d / "out")], m, d), 2,
     "lies inside the output folder"),
    ("no image argument", lambda m, d: ["certify", str(m), "--out", str(d / "out")], 2, "Missing argument 'IMAGES"),
    # Config files and values (exit 2).
    ("unknown config key", lambda m, d: certify_args([_image(d)], m, d, "--config",
                                                     _file(d, "c.toml", "genrations = 4\n")), 2,
     "did you mean 'generations'"),
    ("non-utf-8 config", lambda m, d: certify_args([_image(d)], m, d, "--config", _file(d, "c.toml", b"seed = 1 # \xff\n")),
     2, "is not UTF-8 text"),
    ("invalid toml", lambda m, d: certify_args([_image(d)], m, d, "--config", _file(d, "c.toml", "seed = \n")), 2,
     "is not valid TOML"),
    ("missing config file", lambda m, d: certify_args([_image(d)], m, d, "--config", d / "none.toml"), 2,
     "does not exist"),
    ("json config is a list", lambda m, d: certify_args([_image(d)], m, d, "--config", _file(d, "c.json", "[1]")), 2,
     "must hold a table of keys"),
    ("infinite learning rate", lambda m, d: certify_args([_image(d)], m, d, "--config", _file(
        d, "c.toml", "inversion_learning_rate = inf\n")), 2, "inversion_learning_rate=inf is not allowed"),
    ("nan learning rate", lambda m, d: certify_args([_image(d)], m, d, "--config", _file(
        d, "c.toml", "inversion_learning_rate = nan\n")), 2, "inversion_learning_rate=nan is not allowed"),
    ("nan similarity threshold", lambda m, d: certify_args([_image(d)], m, d, "--similarity-threshold", "nan"), 2,
     "similarity_threshold=nan is not allowed"),
    ("-inf similarity threshold", lambda m, d: certify_args([_image(d)], m, d, "--similarity-threshold", "-inf"), 2,
     "similarity_threshold=-inf is not allowed"),
    ("ssim threshold above 1", lambda m, d: certify_args([_image(d)], m, d, "--similarity-threshold", "2"), 2,
     "similarity_threshold=2.0 is not allowed for ssim: expected a number from -1 to 1"),
    ("infinite guidance scale", lambda m, d: certify_args([_image(d)], m, d, "--config", _file(
        d, "c.toml", "guidance_scales = [1, inf]\n")), 2, "guidance_scales=.* is not allowed"),
    ("empty guidance scales", lambda m, d: certify_args([_image(d)], m, d, "--config", _file(
        d, "c.toml", "guidance_scales = []\n")), 2, "guidance_scales=\\(\\) is not allowed"),
    ("seed 2**70", lambda m, d: certify_args([_image(d)], m, d, "--seed", str(2**70)), 2,
     "seed=1180591620717411303424 is not allowed: expected an integer from 0 to 4294967295"),
    ("negative seed", lambda m, d: certify_args([_image(d)], m, d, "--seed", "-1"), 2, "seed=-1 is not allowed"),
    ("a billion generations", lambda m, d: certify_args([_image(d)], m, d, "--generations", "1000000000"), 2,
     "generations=1000000000 is not allowed: expected an integer from 1 to 10000"),
    ("generations 1e9", lambda m, d: certify_args([_image(d)], m, d, "--generations", "1e9"), 2,
     "'1e9' is not a valid integer"),
    ("fractional count in a file", lambda m, d: certify_args([_image(d)], m, d, "--config", _file(
        d, "c.toml", "error_timesteps = 2.5\n")), 2, "error_timesteps=2.5 is not allowed: expected an integer"),
    ("unknown dtype", lambda m, d: certify_args([_image(d)], m, d, "--dtype", "float64"), 2, "dtype='float64'"),
    ("unknown autocast", lambda m, d: certify_args([_image(d)], m, d, "--autocast", "int8"), 2,
     "autocast='int8' is not allowed: expected one of off, bfloat16, float16"),
    ("meta device", lambda m, d: certify_args([_image(d)], m, d, "--device", "meta"), 2,
     "device='meta' is not allowed: expected auto, cpu, cuda, cuda:N or mps"),
    ("unknown fail-on level", lambda m, d: certify_args([_image(d)], m, d, "--fail-on", "always"), 2,
     "fail_on='always' is not allowed: expected one of memorized, rarely_reproduced, never"),
    ("unknown metric", lambda m, d: certify_args([_image(d)], m, d, "--similarity", "psnr"), 2,
     "similarity='psnr' is not allowed"),
    # Output folders (exit 2).
    ("out under a file", lambda m, d: ["certify", str(m), str(_image(d)), "--out", str(_file(d, "f", "x") / "sub"),
                                       *FAST], 2, "cannot be written"),
    ("empty out", lambda m, d: ["certify", str(m), str(_image(d)), "--out", "", *FAST], 2,
     "--out must name a folder"),
    ("out cannot be created", lambda m, d: ["certify", str(m), str(_image(d)), "--out", "/proc/verifier-out", *FAST],
     2, "cannot be written"),
    ("out holds another run", lambda m, d: ["certify", *_previous_run(m, d)], 2,
     r"holds a run with another config \(seed 0 -> 1\)"),
    ("out holds foreign json", lambda m, d: (_file(d / "out", "notes.json", "{}"), certify_args([_image(d)], m, d))[1],
     2, "not a verifier run folder"),
    ("out holds a foreign run.json", lambda m, d: (_file(d / "out", "run.json", "[]"), certify_args(
        [_image(d)], m, d))[1], 2, "holds a run.json that verifier did not write"),
    ("demo out under a file", lambda m, d: ["demo", "--model", "fixture-16px", "--out",
                                            str(_file(d, "f", "x") / "sub")], 2, "cannot be written"),
    # Models (exit 3).
    ("missing model path", lambda m, d: ["certify", str(d / "nope"), str(_image(d)), "--out", str(d / "out"), *FAST],
     3, "does not exist: expected a local diffusers folder"),
    ("mistyped local path", lambda m, d: ((d / "models").mkdir(), ["certify", f"{d}/models/sd15", str(_image(d)),
                                                                  "--out", str(d / "out"), *FAST])[1], 3,
     "models/sd15' does not exist"),
    ("folder without model_index.json", lambda m, d: ((d / "m").mkdir(), ["certify", str(d / "m"), str(_image(d)),
                                                                         "--out", str(d / "out"), *FAST])[1], 3,
     "is a folder without model_index.json"),
    ("invalid model_index.json", lambda m, d: certify_args([_image(d)], _model_copy(
        m, d, lambda p: (p / "model_index.json").write_text("{half")), d), 3, "model_index.json is not valid JSON"),
    ("list-valued model_index.json", lambda m, d: certify_args([_image(d)], _model_copy(
        m, d, lambda p: (p / "model_index.json").write_text("[]")), d), 3, "model_index.json must be a JSON object"),
    ("missing unet folder", lambda m, d: certify_args([_image(d)], _model_copy(
        m, d, lambda p: shutil.rmtree(p / "unet")), d), 3, "lacks the component folder unet/"),
    ("pickle checkpoint", lambda m, d: ["certify", str(_file(d, "model.ckpt", b"x")), str(_image(d)), "--out",
                                        str(d / "out"), *FAST], 3, "is a pickle checkpoint"),
    ("pickle weights in a folder", lambda m, d: certify_args([_image(d)], _model_copy(
        m, d, lambda p: ((p / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
                         (p / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x"))), d), 3, "has pickle weights"),
    ("safetensors weights that are a pickle", lambda m, d: certify_args([_image(d)], _model_copy(
        m, d, lambda p: (p / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(pickle.dumps({"w": 1}))), d),
     3, "unet/diffusion_pytorch_model.safetensors is not a safetensors file: it starts like a pickle"),
    ("safetensors weights cut short", lambda m, d: certify_args([_image(d)], _model_copy(
        m, d, lambda p: _truncate(p / "vae" / "diffusion_pytorch_model.safetensors")), d), 3,
     "vae/diffusion_pytorch_model.safetensors is not a safetensors file: its header or sizes are broken"),
    ("unknown model file kind", lambda m, d: ["certify", str(_file(d, "model.onnx", b"x")), str(_image(d)), "--out",
                                              str(d / "out"), *FAST], 3, "is a file of unknown kind '.onnx'"),
    ("single file without config", lambda m, d: ["certify", str(_file(d, "model.safetensors", b"x")),
                                                 str(_image(d)), "--out", str(d / "out"), *FAST], 3,
     "pass --model-config DIR"),
    ("text encoder of another size", lambda m, d: certify_args([_image(d)], _model_copy(
        m, d, lambda p: _edit_json(p / "text_encoder" / "config.json", lambda c: c.update(hidden_size=32))), d), 3,
     "do not fit its config.json"),
    ("unsupported prediction type", lambda m, d: certify_args([_image(d)], _model_copy(
        m, d, lambda p: _edit_json(p / "scheduler" / "scheduler_config.json",
                                   lambda c: c.update(prediction_type="flow"))), d), 3,
     "prediction_type 'flow' is not supported"),
    ("corrupt safetensors", lambda m, d: certify_args([_image(d)], _model_copy(
        m, d, lambda p: (p / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")), d), 3,
     "vae/diffusion_pytorch_model.safetensors is not a safetensors file: its header or sizes are broken"),
    # Metric weights (exit 3).
    ("lpips without trunk weights", lambda m, d: certify_args([_image(d)], m, d, "--similarity", "lpips",
                                                              "--lpips-weights", d / "none.pth"), 3,
     "needs torchvision's AlexNet weights"),
    ("sscd weights not torchscript", lambda m, d: certify_args([_image(d)], m, d, "--similarity", "sscd",
                                                               "--sscd-weights", _file(d, "s.pt", b"junk")), 3,
     "is not a TorchScript file"),
    # Calibration files and calibrate (exit 2), named before any model is loaded (the model here does not exist).
    ("missing calibration file", lambda m, d: ["certify", str(d / "no-model"), str(_image(d)), "--out", str(d / "out"),
                                               *FAST, "--calibration", str(d / "none.json")], 2,
     "--calibration '.*none.json' cannot be read as JSON"),
    ("calibration file of another kind", lambda m, d: ["certify", str(d / "no-model"), str(_image(d)), "--out",
                                                       str(d / "out"), *FAST, "--calibration",
                                                       str(_file(d, "c.json", '{"schema": 1}'))], 2,
     "is not a verifier calibration file"),
    ("calibrate out under a file", lambda m, d: ["calibrate", str(d / "no-model"), str(_image(d)), str(_image(d, "b.png", 1)),
                                                 "--out", str(_file(d, "f", "x") / "cal.json"), "--work", str(d / "w"),
                                                 "--false-alarm-rate", "0.9", *FAST], 2, "cal.json' cannot be written"),
    ("calibrate rate above 1", lambda m, d: ["calibrate", str(m), str(_image(d)), "--out", str(d / "cal.json"),
                                             "--false-alarm-rate", "2", *FAST], 2,
     "--false-alarm-rate 2.0 is not allowed"),
    ("missing public key", lambda m, d: ["verify", str(_file(d / "certs", "a.json", "{}")), "--public-key",
                                         str(d / "none.pem")], 2, "--public-key '.*none.pem' is not a readable PEM"),
    # verify (exit 3: nothing to check; 2: bad argument).
    ("verify a folder without certificates", lambda m, d: ((d / "empty").mkdir(), ["verify", str(d / "empty")])[1],
     3, "holds no verifier certificate"),
    ("verify a missing path", lambda m, d: ["verify", str(d / "none")], 2, "does not exist"),
]


@pytest.mark.parametrize(("name", "build", "code", "message"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_gets_its_exit_code_and_a_clear_message(tiny_model, tmp_path, name, build, code, message):
    import re

    argv = build(tiny_model, tmp_path)
    result = CliRunner().invoke(main, [str(a) for a in argv])
    output = result.output
    assert result.exit_code == code, f"{name}: exit {result.exit_code}\n{output}"
    assert re.search(message, output), f"{name}: {message!r} not in\n{output}"
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_corpus_has_at_least_fifty_kinds():
    assert len(CASES) >= 50


# --- inputs that are unusual but fine ------------------------------------------------------------

def test_bom_csv_and_numeric_ids_are_read(tmp_path):
    from verifier.images import collect_images

    _image(tmp_path, "a.png")
    _image(tmp_path, "b.png", 1)
    (tmp_path / "bom.csv").write_bytes("\ufeffpath,id\na.png,first\n".encode("utf-8"))
    (tmp_path / "n.jsonl").write_text('{"path": "b.png", "id": 7}\n')
    assert [i.id for i in collect_images([tmp_path / "bom.csv", tmp_path / "n.jsonl"])] == ["first", "7"]


def test_reserved_names_never_become_image_ids(tmp_path):
    from verifier.images import collect_images

    for name in ("summary", "run", "Report"):
        _image(tmp_path / "in", f"{name}.png")
    (tmp_path / "l.jsonl").write_text('{"path": "in/summary.png", "id": "../summary"}\n')
    ids = [i.id for i in collect_images([tmp_path / "in"])]
    assert sorted(ids) == ["image-Report", "image-run", "image-summary"]
    assert [i.id for i in collect_images([tmp_path / "l.jsonl"])] == ["image-summary"]


def test_ids_do_not_depend_on_argument_order(tmp_path):
    from verifier.images import collect_images

    a, b = _image(tmp_path / "x", "photo.png"), _image(tmp_path / "y", "photo.png", 1)
    forward = {i.id: i.sha256 for i in collect_images([a, b])}
    backward = {i.id: i.sha256 for i in collect_images([b, a])}
    assert forward == backward and sorted(forward) == ["x_photo", "y_photo"]


@pytest.mark.parametrize("stem", ["p" * 240, "\u5199\u771f" * 40])  # 240 ASCII bytes; 80 CJK characters, 240 bytes
def test_long_file_names_get_short_stable_ids_counted_in_bytes(tmp_path, stem):
    from verifier.images import MAX_ID_BYTES, collect_images, is_valid_id

    path = _image(tmp_path, stem + ".png")
    ids = [collect_images([path])[0].id for _ in range(2)]
    assert ids[0] == ids[1] and len(ids[0].encode()) <= MAX_ID_BYTES and is_valid_id(ids[0])
    # Every file the run writes for it fits a 255-byte file-name limit.
    assert len(f".{ids[0]}.witness.safetensors.tmp".encode()) < 255


def test_ids_are_unicode_normalized(tmp_path):
    import unicodedata

    from verifier.images import collect_images, is_valid_id

    composed = unicodedata.normalize("NFC", "caf\u00e9")
    decomposed = unicodedata.normalize("NFD", composed)
    path = _image(tmp_path, decomposed + ".png")
    assert collect_images([path])[0].id == composed
    assert is_valid_id(composed) and not is_valid_id(decomposed)


def test_float_and_32_bit_images_keep_their_range(tmp_path):
    from verifier.images import prepare_image

    ramp = np.linspace(0, 1, 16, dtype=np.float32)[None].repeat(16, 0)
    float_image = prepare_image(_float_tiff(tmp_path, ramp, "ramp.tif"), 16)
    assert float_image.max() > 0.95 and float_image.min() < 0.05, "a float image in 0..1 must not become black"
    wide = (ramp.astype(np.float64) * (2**31 - 1)).astype(np.int32)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    int_image = prepare_image(tmp_path / "wide.tif", 16)
    assert 0.4 < float(int_image.mean()) < 0.6, "a 32-bit image must be scaled, not clipped at 65535"


def test_output_files_follow_the_umask_and_killed_temporaries_are_cleaned(tmp_path):
    from verifier.certificate.store import atomic_write_json, prepare_output_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / ".x.json.123.tmp").write_text("half")
    previous = os.umask(0o022)
    try:
        prepare_output_folder(out)
        atomic_write_json(out / "a.json", {"a": 1})
    finally:
        os.umask(previous)
    assert not list(out.glob(".*.tmp"))
    assert (out / "a.json").stat().st_mode & 0o777 == 0o644
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        atomic_write_json(out / "b.json", {"a": float("nan")})
    assert not (out / "b.json").exists()


def test_ctrl_c_exits_130_and_leaves_nothing_half_written(tiny_model, tmp_path):
    images = [_image(tmp_path / "images", f"img{i}.png", i) for i in range(6)]
    out = tmp_path / "out"
    command = [sys.executable, "-c", "from verifier.cli import main; main()", "certify", str(tiny_model),
               str(tmp_path / "images"), "--out", str(out), "--batch-size", "1", *FAST]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "img0.json").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and "Aborted" not in stderr
    assert not list(out.glob(".*.tmp"))
    from verifier.certificate.schema import read_certificate

    for path in out.glob("img*.json"):
        read_certificate(path)  # every certificate present is whole and valid
    assert len(images) == 6


# --- soak: kill a run at random points, resume, and lose nothing ---------------------------------------

def _soak(tiny_model, tmp_path, kills: int) -> None:
    """SIGKILL a certify run at `kills` random moments, resume each time, then compare with an uninterrupted run."""
    import random

    from verifier.api import certify
    from verifier.certificate.schema import read_certificate
    from verifier.config import VerifierConfig

    count = 16
    for index in range(count):
        _image(tmp_path / "images", f"img{index:02d}.png", index)
    out = tmp_path / "out"
    command = [sys.executable, "-c", "from verifier.cli import main; main()", "certify", str(tiny_model),
               str(tmp_path / "images"), "--out", str(out), "--batch-size", "1", "--inversion-steps", "2",
               "--framing-steps", "2", "--generations", "2", "--device", "cpu"]
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    rng = random.Random(20261201)
    finished_at_kill = []
    for _ in range(kills):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env=environment)
        # Past the imports and the model load, kill at a random moment of the certification loop: once a
        # random number of certificates exist (so the kill falls inside the run however fast this machine
        # is), after a random fraction of a second more.
        for line in process.stderr:
            if line.startswith("model "):
                break
        wanted = rng.randint(0, count - 2)
        while process.poll() is None and (len(list(out.glob("img*.json"))) if out.exists() else 0) < wanted:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        process.kill()
        process.wait()
        finished_at_kill.append(len(list(out.glob("img*.json"))) if out.exists() else 0)
        for path in out.glob("img*.json"):
            read_certificate(path)  # never half-written, always valid
    final = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert final.returncode in (0, 1), final.stderr
    assert not list(out.glob(".*.tmp")), "temporaries of killed runs are cleaned"
    certificates = sorted(out.glob("img*.json"))
    expected = [f"img{i:02d}" for i in range(count)]
    assert [p.stem for p in certificates] == expected, "no certificate lost or duplicated"
    summary = json.loads((out / "summary.json").read_text())
    assert [entry["id"] for entry in summary["images"]] == expected
    assert sum(summary["counts"].values()) == count
    reference = certify(tiny_model, [tmp_path / "images"], tmp_path / "reference",
                        VerifierConfig(device="cpu", batch_size=1, inversion_steps=2, framing_steps=2, generations=2))
    for certificate in reference:
        resumed = read_certificate(out / f"{certificate['image']['id']}.json")
        assert resumed["verdict"] == certificate["verdict"]
        np.testing.assert_allclose(resumed["prediction_error"]["inverted"], certificate["prediction_error"]["inverted"],
                                   rtol=1e-4)
    assert any(0 < done < count for done in finished_at_kill), f"no kill fell inside the run: {finished_at_kill}"


def test_soak_killed_runs_resume_without_loss(tiny_model, tmp_path):
    _soak(tiny_model, tmp_path, kills=4)


@pytest.mark.slow
def test_soak_twenty_kills(tiny_model, tmp_path):
    _soak(tiny_model, tmp_path, kills=20)


def test_outputs_inside_the_images_folder_are_never_certified(tiny_model, tmp_path):
    """--out inside the images folder: the rerun certifies the same images, not its own *.closest.png."""
    for index in range(2):
        _image(tmp_path / "photos", f"p{index}.png", index)
    args = ["certify", str(tiny_model), str(tmp_path / "photos"), "--out", str(tmp_path / "photos" / "certs"), *FAST]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    assert first.exit_code in (0, 1) and second.exit_code in (0, 1), second.output
    assert "2 certificates" in first.output and "2 certificates" in second.output
    assert list((tmp_path / "photos" / "certs").glob("*.closest.png")), "the outputs are there to be ignored"


def test_a_bad_image_is_one_line_without_a_usage_banner(tiny_model, tmp_path):
    result = CliRunner().invoke(main, certify_args([_file(tmp_path, "fake.png", b"not a png")], tiny_model, tmp_path))
    assert result.exit_code == 2
    assert "Usage:" not in result.output and result.output.strip().startswith("error: IMAGES:")


def test_same_named_files_in_one_folder_take_their_extension(tmp_path):
    from PIL import Image

    from verifier.images import collect_images

    png = _image(tmp_path / "x", "photo.png")
    Image.open(png).convert("RGB").save(tmp_path / "x" / "photo.jpg")
    other = _image(tmp_path / "y", "photo.png", 1)
    assert sorted(i.id for i in collect_images([tmp_path / "x", other])) == ["x_photo.jpg", "x_photo.png", "y_photo"]
