"""Bad and hostile inputs, through every command a user runs: each ends cleanly, never with a crash.

A bad input must end with exit code 2 and exactly one `error: ` line on stderr (besides `·` progress
lines and progress bars) that names the offending file or flag and says what to do; no traceback,
and nothing written: the output path does not exist afterwards, or a folder that was there is byte
for byte what it was. Odd-but-valid inputs (paths with spaces, quotes and non-ASCII characters, a
labels file with a UTF-8 byte-order mark or CRLF line endings, CMYK, 16-bit, palette and 1x1 images)
must work (exit 0).

Every case is a real subprocess (`tests.conftest.run_cli`) on real files. Cases of one family run
two at a time, and a family reports all its failing cases in one assertion, each by name. The one
export that the model and folder cases read is started when the module starts and runs beside the
families that do not need it.
"""

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, make_images, run_cli

SMALL = ["--alpha", "0.35", "--resolution", "96", "--weights", "random", "--seed", "0"]
ODD_FOLDER = 'ça va "x" – ü'  # spaces, quotes, non-ASCII: a path users do have
TARGETS_WITH_SHELL_SYNTAX = {
    "semicolon": "ssh://u@h;rm -rf x",
    "command substitution": "ssh://u@$(id)",
    "backticks": "ssh://u@h`reboot`",
    "newline": "ssh://u@h\nreboot",
    "adb serial with a semicolon": "adb:serial;reboot",
}


@dataclasses.dataclass
class Case:
    """One command line and what it must do.

    bad: exit 2, one `error: ` line holding every one of `words`, and nothing written: `absent`
    paths do not exist afterwards, `untouched` folders are byte-identical. Otherwise it must
    succeed: exit 0, `stdout_words` printed, `creates` written."""
    name: str
    module: str
    args: list
    words: tuple = ()
    absent: tuple = ()
    untouched: tuple = ()
    bad: bool = True
    stdout_words: tuple = ()
    stdout_lacks: tuple = ()
    creates: tuple = ()
    env: dict = None


def bad(name, module, *args, words=(), absent=(), untouched=(), env=None):
    return Case(name, module, list(args), tuple(words), tuple(absent), tuple(untouched), env=env)


def odd_but_valid(name, module, *args, stdout_words=(), stdout_lacks=(), creates=(), env=None):
    return Case(name, module, list(args), bad=False, stdout_words=tuple(stdout_words),
                stdout_lacks=tuple(stdout_lacks), creates=tuple(creates), env=env)


def digest(path):
    """{relative path: sha256 or 'dir'} of everything under `path` (hidden entries included)."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    found = {}
    for entry in sorted(path.rglob("*")):
        key = entry.relative_to(path).as_posix()
        found[key] = "dir" if entry.is_dir() else hashlib.sha256(entry.read_bytes()).hexdigest()
    return found


def _is_progress(line):
    # `· stage…` lines and tqdm bars ("calibration images:  50%|██   | 2/4 [00:00<…]").
    return line.startswith("·") or re.search(r"\d+/\d+ \[", line) is not None


def problems_of(case, result, before):
    """What is wrong with how `case` ended, as a list of sentences (empty: it ended as it must)."""
    problems = []
    stderr_lines = [line for line in result.stderr.splitlines() if line.strip()]
    if "Traceback" in result.stderr or "Segmentation fault" in result.stderr:
        problems.append("crashed")
    if case.bad:
        if result.returncode != 2:
            problems.append(f"exit code {result.returncode}, not 2")
        errors = [line for line in stderr_lines if line.startswith("error: ")]
        others = [line for line in stderr_lines if not line.startswith("error: ")
                  and not _is_progress(line)]
        if len(errors) != 1:
            problems.append(f"{len(errors)} error lines, not 1")
        if others:
            problems.append(f"other stderr lines: {others[:3]}")
        for word in case.words:
            if errors and str(word) not in errors[0]:
                problems.append(f"the error does not say {str(word)!r}")
        for path in case.absent:
            if Path(path).exists() or Path(path).is_symlink():
                problems.append(f"{path} was written")
        for path, was in before.items():
            if digest(path) != was:
                problems.append(f"{path} changed")
    else:
        if result.returncode != 0:
            problems.append(f"exit code {result.returncode}, not 0")
        if any(line.startswith("error: ") for line in stderr_lines):
            problems.append("printed an error")
        for word in case.stdout_words:
            if str(word) not in result.stdout:
                problems.append(f"stdout lacks {str(word)!r}")
        for word in case.stdout_lacks:
            if str(word) in result.stdout:
                problems.append(f"stdout holds {str(word)!r}")
        for path in case.creates:
            if not Path(path).exists():
                problems.append(f"{path} was not written")
    if problems:
        shown = "\n      ".join(stderr_lines[-4:])
        return [f"{case.name} ({case.module}): {'; '.join(problems)}\n      {shown}"]
    return []


def run_cases(cases):
    """Runs the cases two at a time; fails once, naming every case that did not end as it must."""
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"

    def run_one(case):
        before = {path: digest(path) for path in case.untouched}
        result = run_cli(case.module, *case.args, env=case.env, timeout=300)
        return problems_of(case, result, before)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        failures = [line for found in pool.map(run_one, cases) for line in found]
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


# --- the corpus -------------------------------------------------------------------------------


def _png_claiming(width, height):
    """A PNG whose header claims width × height pixels (a decompression bomb, in 70 bytes)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _write_hostile_images(folder):
    """Files with image names that Pillow refuses or raises on, each for another reason."""
    from PIL import Image

    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    files = {
        "truncated.jpg": buffer.getvalue()[: len(buffer.getvalue()) // 2],
        "bomb.png": _png_claiming(30000, 30000),
        "empty.jpg": b"",
        "text.png": b"this is a text file, not a PNG\n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def _write_odd_images(folder):
    """Valid images in the modes a pipeline forgets: CMYK JPEG, 16-bit PNG, palette with
    transparency, a single pixel."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(folder / "cmyk.jpg", "JPEG")
    Image.fromarray(rng.integers(0, 65536, (30, 20)).astype(np.uint16)).save(folder / "gray16.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(folder / "palette.png",
                                                                   transparency=0)
    Image.new("RGB", (1, 1), (200, 30, 10)).save(folder / "one_pixel.png")
    return sorted(folder.iterdir())


def _tiny_models(folder):
    """.tflite files that load but are not image classifiers: two inputs, a [1, 10] float vector,
    int32 token ids."""
    import tensorflow as tf

    def tflite(function, *specs):
        concrete = tf.function(function, input_signature=list(specs)).get_concrete_function()
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()

    image = tf.TensorSpec([1, 8, 8, 3], tf.float32)
    models = {
        "two_inputs": tflite(lambda a, b: tf.nn.softmax(tf.reduce_mean(a + b, [1, 2])), image, image),
        "vector_input": tflite(lambda x: tf.nn.softmax(tf.matmul(x, tf.ones([10, 4]))),
                               tf.TensorSpec([1, 10], tf.float32)),
        "token_ids": tflite(lambda ids: tf.nn.softmax(tf.gather(tf.ones([100, 4]), ids)[:, 0, :]),
                            tf.TensorSpec([1, 16], tf.int32)),
    }
    folder.mkdir(parents=True)
    for name, data in models.items():
        (folder / f"{name}.tflite").write_bytes(data)
    return {name: folder / f"{name}.tflite" for name in models}


def _fake_remote_tools(folder):
    """`ssh` and `adb` that only leave a mark: a target that reaches them was run."""
    folder.mkdir(parents=True)
    for tool in ("ssh", "adb"):
        script = folder / tool
        script.write_text(f'#!/bin/sh\ntouch "{folder}/{tool}-was-run"\nexit 1\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    c = {"root": root}
    c["images"] = make_images(root / "images", per_class=6)
    c["hostile_images"] = _write_hostile_images(root / "hostile_images")
    c["odd_images"] = _write_odd_images(root / ODD_FOLDER / "odd images")
    c["fake_tools_env"] = _fake_remote_tools(root / "fakebin")
    c["fakebin"] = root / "fakebin"
    blocker = root / "a_file"
    blocker.write_text("a file where a folder is expected")
    c["blocker"] = blocker
    return c


@pytest.fixture(scope="module")
def started_export(corpus):
    """The one small export, started at once in the background (the families that do not read it
    run meanwhile)."""
    out = corpus["root"] / "export"
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(run_cli, "export", *SMALL, "--calibration", corpus["images"],
                         "--calibration-samples", "20", "--output", out)
    yield out, future
    future.cancel()
    pool.shutdown(wait=True)


@pytest.fixture(scope="module", autouse=True)
def _start_export_first(started_export):
    return started_export


@pytest.fixture(scope="module")
def export(started_export):
    out, future = started_export
    result = future.result()
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def models(corpus, export):
    """Model files that are not a classifier the pipeline can use, beside the export's good one."""
    folder = corpus["root"] / "models"
    found = _tiny_models(folder)
    good = (export / "model.tflite").read_bytes()
    rng = np.random.default_rng(3)
    broken = {
        "random_bytes": rng.bytes(4096),
        "png_renamed": (corpus["odd_images"][-1]).read_bytes(),
        "cut_in_half": good[: len(good) // 2],
        "zero_bytes": b"",
        # The flatbuffer identifier is there, the rest is noise: what slips past a magic check.
        "identifier_then_noise": good[:8] + rng.bytes(4096),
    }
    for name, data in broken.items():
        (folder / f"{name}.tflite").write_bytes(data)
        found[name] = folder / f"{name}.tflite"
    found["a_folder"] = folder / "a_folder.tflite"
    found["a_folder"].mkdir()
    odd = corpus["root"] / ODD_FOLDER / "model.tflite"
    odd.write_bytes(good)
    found["odd_path"] = odd
    return found


BROKEN_MODELS = ("random_bytes", "png_renamed", "cut_in_half", "zero_bytes", "identifier_then_noise",
                 "a_folder")
NOT_CLASSIFIERS = ("two_inputs", "vector_input", "token_ids")


def export_variant(export, folder, labels=None, config=None):
    """A copy of the export folder with labels.txt (bytes) or model_config.json (text) replaced."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    for name in ("model.tflite", "labels.txt", "model_config.json", "report.json"):
        shutil.copyfile(export / name, folder / name)
    if labels is not None:
        (folder / "labels.txt").write_bytes(labels)
    if config is not None:
        (folder / "model_config.json").write_text(config)
    return folder


def _config_with(export, change):
    config = json.loads((export / "model_config.json").read_text())
    change(config)
    return json.dumps(config, indent=2)  # NaN and Infinity written as JSON's non-standard tokens


def _set(path, value):
    def change(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return change


_DELETE = object()


def _labels_variants(export):
    good = (export / "labels.txt").read_bytes()
    lines = good.decode().splitlines()
    text = lambda items: ("\n".join(items) + "\n").encode()  # noqa: E731
    return {
        "one label too few": text(lines[:-1]),
        "a blank line": text(lines[:500] + [""] + lines[500:-1]),
        "a duplicate line": text([lines[1]] + lines[1:]),
        "bytes that are not UTF-8": b"caf\xe9\n" + text(lines[1:]),
    }


# --- the families -----------------------------------------------------------------------------


def test_image_files_pillow_refuses(corpus):
    hostile, root = corpus["hostile_images"], corpus["root"]
    hostile_folder = next(iter(hostile.values())).parent
    cases = [bad(f"preprocess {name}", "preprocess", path, words=[name]) for name, path in hostile.items()]
    cases.append(odd_but_valid("preprocess odd modes at an odd path", "preprocess", *corpus["odd_images"],
                               "--resolution", "32", stdout_words=["(32, 32, 3) float32"]))
    out = root / "calibrate-hostile.json"
    cases += [
        bad("calibrate a folder of undecodable images", "calibrate", "--calibration", hostile_folder,
            words=["none of the 4 images", str(hostile_folder)]),
        bad("calibrate a missing folder", "calibrate", "--calibration", root / "no such folder",
            words=["does not exist", "no such folder"]),
        bad("calibrate zero samples", "calibrate", "--calibration", corpus["images"],
            "--calibration-samples", "0", words=["--calibration-samples"]),
        odd_but_valid("calibrate odd images at an odd path", "calibrate", "--calibration",
                      corpus["odd_images"][0].parent, "--resolution", "96",
                      stdout_words=['"used": 4', '"skipped": []']),
    ]
    list_file = root / "broken list.json"
    list_file.write_text('{"format": "pipeline.image_list", "root": ')
    cases.append(bad("calibrate a broken image list", "calibrate", "--calibration", list_file,
                     words=[str(list_file)]))
    out = root / "golden-hostile"
    cases.append(bad("golden from undecodable photos", "golden", "--images", hostile_folder,
                     "--output", out, words=["truncated.jpg"], absent=[out]))
    cases.append(bad("golden into a file", "golden", "--images", corpus["odd_images"][0].parent,
                     "--output", corpus["blocker"] / "golden", words=["--output", "is a file"],
                     absent=[corpus["blocker"] / "golden"]))
    odd_out = root / ODD_FOLDER / "golden out"
    cases.append(odd_but_valid("golden from odd photos into an odd path", "golden", "--images",
                               corpus["odd_images"][0].parent, "--output", odd_out,
                               creates=[odd_out / "photo_cmyk.input", odd_out / "photo_one_pixel.rgb"]))
    run_cases(cases)


def test_training_and_model_building_inputs(corpus):
    root, blocker = corpus["root"], corpus["blocker"]
    one_class = make_images(root / "one class", classes=("cats",), per_class=3)
    with_bad_class = make_images(root / "with a bad class", per_class=3)
    shutil.copytree(next(iter(corpus["hostile_images"].values())).parent, with_bad_class / "broken")
    not_hdf5 = root / "weights.weights.h5"
    not_hdf5.write_text("not weights")
    not_zip = root / "model.keras"
    not_zip.write_bytes(b"PK not a zip")
    labels = root / "labels latin1.txt"
    labels.write_bytes(b"caf\xe9\nth\xe9\n")
    out = root / "train out"
    train = ["--weights", "random", "--resolution", "96", "--alpha", "0.35", "--head-epochs", "1",
             "--epochs", "0", "--output", out]
    cases = [
        bad("train: --data missing", "train", "--data", root / "no data", *train,
            words=["no data", "does not exist"], absent=[out]),
        bad("train: one class", "train", "--data", one_class, *train, words=["one class"],
            absent=[out]),
        bad("train: a class of undecodable images", "train", "--data", with_bad_class, *train,
            words=["'broken'", "no decodable"], absent=[out]),
        bad("train: --val-split 1.5", "train", "--data", corpus["images"], *train, "--val-split",
            "1.5", words=["--val-split"], absent=[out]),
        bad("train: --output is a file", "train", "--data", corpus["images"], *train[:-1],
            blocker / "out", words=["--output", "is a file"]),
        bad("build: weights not HDF5", "build", *SMALL[:4], "--weights", not_hdf5,
            words=[str(not_hdf5), "not an HDF5 file"]),
        bad("build: .keras not a zip", "build", "--model", not_zip, words=[str(not_zip)]),
        bad("build: labels not UTF-8", "build", *SMALL, "--classes", "2", "--labels", labels,
            words=[str(labels), "UTF-8"]),
        bad("analyze: unknown width", "analyze", "--alpha", "0.6", words=["--alpha 0.6"]),
        bad("analyze: --json under a file", "analyze", *SMALL[:4], "--json", blocker / "a.json",
            words=["--json", str(blocker)]),
        bad("compare: unknown model", "compare", "--models", "v9", words=["--models v9"]),
        bad("compare: --resolution 0", "compare", "--models", "v3-small", "--resolution", "0",
            words=["--resolution"]),
        bad("compare: --benchmark-runs 0", "compare", "--models", "v3-small", "--resolution", "96",
            "--benchmark-runs", "0", words=["--benchmark-runs"]),
        bad("compare: calibration images all undecodable", "compare", "--models", "v3-small",
            "--resolution", "96", "--calibration", corpus["hostile_images"]["bomb.png"].parent,
            "--output", root / "compare out", words=["could be decoded"],
            absent=[root / "compare out"]),
        bad("convert: unknown --quantize", "convert", *SMALL, "--quantize", "int3",
            words=["--quantize int3"]),
        bad("convert: --out under a file", "convert", *SMALL, "--quantize", "none", "--out",
            blocker / "m.tflite", words=[str(blocker)]),
        bad("diagnose: no --output", "diagnose", *SMALL, "--calibration", corpus["images"],
            words=["--output"]),
        bad("export: calibration images all undecodable", "export", *SMALL, "--calibration",
            corpus["hostile_images"]["bomb.png"].parent, "--output", root / "export out",
            words=["could be decoded"], absent=[root / "export out"]),
        bad("export: --from-train folder that is not one", "export", "--from-train",
            corpus["images"], "--output", root / "export out 2", words=["--from-train", "lacks"],
            absent=[root / "export out 2"]),
    ]
    run_cases(cases)


def test_targets_with_shell_syntax_are_refused_and_never_run(corpus, export):
    env = corpus["fake_tools_env"]
    model = export / "model.tflite"
    cases = []
    for name, target in TARGETS_WITH_SHELL_SYNTAX.items():
        out = corpus["root"] / f"bench {name}"
        cases.append(bad(f"benchmark --target {name}", "benchmark", model, "--target", target,
                         "--output", out, words=["--target"], absent=[out], env=env))
    for name in ("semicolon", "backticks", "newline", "adb serial with a semicolon"):
        cases.append(bad(f"verify --target {name}", "verify", "--tflite", model, "--target",
                         TARGETS_WITH_SHELL_SYNTAX[name], "--eval", corpus["images"],
                         words=["--target"], env=env))
    cases.append(bad("benchmark --remote-python with shell syntax", "benchmark", model, "--target",
                     "ssh://pi@board", "--remote-python", "python3;reboot", words=["--remote-python"],
                     env=env))
    run_cases(cases)
    ran = sorted(p.name for p in corpus["fakebin"].glob("*-was-run"))
    assert not ran, f"a refused target still ran {ran}"


def test_model_files_that_are_not_usable_classifiers(corpus, models, export):
    root = corpus["root"]
    image = corpus["odd_images"][0]
    cases = []
    for name in BROKEN_MODELS:
        path = models[name]
        cases.append(bad(f"inspect {name}", "inspect", path, words=[str(path)]))
        cases.append(bad(f"predict {name}", "predict", path, image, words=[str(path)]))
        if name in ("cut_in_half", "identifier_then_noise", "a_folder"):
            out = root / f"bench {name}"
            cases.append(bad(f"benchmark {name}", "benchmark", path, "--output", out,
                             words=[str(path)], absent=[out]))
            cases.append(bad(f"verify --tflite {name}", "verify", "--tflite", path, "--eval",
                             corpus["images"], *SMALL, words=["--tflite", str(path)]))
    for name in NOT_CLASSIFIERS:
        path = models[name]
        cases.append(bad(f"predict {name}", "predict", path, image, words=[str(path)]))
        cases.append(bad(f"verify --tflite {name}", "verify", "--tflite", path, "--eval",
                         corpus["images"], *SMALL, words=["--tflite", str(path)]))
    cases.append(odd_but_valid("inspect a two-input model: says clients refuse it", "inspect",
                               models["two_inputs"], stdout_words=["REFUSES"]))
    cases.append(bad("benchmark a token-id model that does not run on its inputs", "benchmark",
                     models["token_ids"], "--benchmark-runs", "2", "--threads-sweep", "1",
                     words=[str(models["token_ids"])]))
    cases.append(bad("benchmark --threads-sweep 0", "benchmark", export / "model.tflite",
                     "--threads-sweep", "0", words=["--threads-sweep"]))
    cases.append(bad("benchmark --benchmark-runs 0", "benchmark", export / "model.tflite",
                     "--benchmark-runs", "0", words=["--benchmark-runs"]))
    odd, odd_out = models["odd_path"], root / ODD_FOLDER / "bench out"
    cases.append(odd_but_valid("inspect at an odd path", "inspect", odd, stdout_words=[str(odd)]))
    cases.append(odd_but_valid("benchmark at an odd path", "benchmark", odd, "--benchmark-runs", "3",
                               "--threads-sweep", "1", "--output", odd_out,
                               creates=[odd_out / "benchmark.json"]))
    cases.append(odd_but_valid("predict odd images with a model at an odd path", "predict", odd,
                               *corpus["odd_images"], stdout_words=["one_pixel.png", "cmyk.jpg"]))
    run_cases(cases)


def test_export_folders_with_bad_labels_configs_and_baselines(corpus, export):
    root = corpus["root"] / "folders"
    image = corpus["odd_images"][0]
    app = corpus["root"] / "app"
    shutil.copytree(REPO / "android_demo", app, ignore=shutil.ignore_patterns("build", ".gradle"))
    cases = []
    for name, data in _labels_variants(export).items():
        folder = export_variant(export, root / f"labels {name}", labels=data)
        cases.append(bad(f"predict: labels with {name}", "predict", folder, image,
                         words=[str(folder / "labels.txt")]))
        cases.append(bad(f"deploy: labels with {name}", "deploy", "android", folder, app,
                         words=[str(folder / "labels.txt")], untouched=[app]))
    predict_configs = {
        "not JSON": (export / "model_config.json").read_text()[:300],
        "NaN": _config_with(export, _set(["preprocessing", "normalize", "std"], float("nan"))),
        "Infinity": _config_with(export, _set(["preprocessing", "crop", "crop_fraction"], float("inf"))),
        "no preprocessing": _config_with(export, _set(["preprocessing"], _DELETE)),
        "a size that is a string": _config_with(export, _set(["preprocessing", "resize", "size"], "96")),
        "a model file outside the folder": _config_with(export, _set(["model_file"], "../../model.tflite")),
        "a list": "[]",
    }
    for name, text in predict_configs.items():
        folder = export_variant(export, root / f"predict config {name}", config=text)
        cases.append(bad(f"predict: config {name}", "predict", folder, image,
                         words=[str(folder / "model_config.json")]))
    deploy_configs = {
        "not JSON": "{",
        "NaN scale": _config_with(export, _set(["input", "quantization", "scale"], float("nan"))),
        "a scale that is a string": _config_with(export, _set(["input", "quantization", "scale"], "0.0078")),
        "no input": _config_with(export, _set(["input"], _DELETE)),
        "another labels file": _config_with(export, _set(["labels_file"], "names.txt")),
    }
    for name, text in deploy_configs.items():
        folder = export_variant(export, root / f"deploy config {name}", config=text)
        cases.append(bad(f"deploy: config {name}", "deploy", "android", folder, app,
                         words=[str(folder / "model_config.json")], untouched=[app]))
    cases.append(bad("deploy: a folder that is not the app", "deploy", "android", export, root,
                     words=[str(root), "android_demo"]))
    for name in ("truncated.jpg", "bomb.png", "text.png"):
        path = corpus["hostile_images"][name]
        cases.append(bad(f"predict: image {name}", "predict", export, path, words=[str(path)]))

    lines = (export / "labels.txt").read_bytes().decode().splitlines()
    bom_crlf = ("\ufeff" + "\r\n".join(lines) + "\r\n").encode()
    odd = export_variant(export, corpus["root"] / ODD_FOLDER / "export with BOM and CRLF", labels=bom_crlf)
    cases.append(odd_but_valid("predict: labels with a BOM and CRLF, at an odd path", "predict", odd,
                               image, "--top-k", "1000", stdout_words=["tench"],
                               stdout_lacks=["\ufeff", "\r"]))
    odd_app = corpus["root"] / ODD_FOLDER / "android demo"
    shutil.copytree(app, odd_app)
    cases.append(odd_but_valid("deploy: labels with a BOM and CRLF, at odd paths", "deploy", "android",
                               odd, odd_app, creates=[odd_app / "app/src/main/assets/model.tflite"]))
    cases += _check_cases(corpus, export)
    run_cases(cases)
    assets = (odd_app / "app/src/main/assets/labels.txt").read_bytes()
    assert not assets.startswith(b"\xef\xbb\xbf") and b"\r" not in assets, "deploy kept the BOM/CRLF"


def _check_cases(corpus, export):
    from pipeline import check

    root = corpus["root"] / "check"
    root.mkdir()
    report = json.loads((export / "report.json").read_text())
    baseline = check.baseline_from_report(report)

    def written(name, content):
        path = root / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    def changed(source, **fields):
        copy = json.loads(json.dumps(source))
        copy.update(fields)
        return json.dumps(copy)  # NaN and Infinity as JSON's non-standard tokens

    good_report = export / "report.json"
    baselines = {
        "not JSON": written("not json.json", '{"float": '),
        "NaN agreement": written("nan.json", changed(baseline, agreement_top1=float("nan"))),
        "Infinity size": written("inf.json", changed(baseline, size_bytes=float("inf"))),
        "missing keys": written("missing.json", {"format_version": 2}),
        "a string KL": written("string.json", changed(baseline, kl_mean="0.1")),
        "a list": written("list.json", [baseline]),
    }
    cases = []
    for name, path in baselines.items():
        out = root / f"result {name}.json"
        cases.append(bad(f"check: baseline {name}", "check", "--report", good_report, "--baseline",
                         path, "--result", out, words=[str(path)], absent=[out]))
    good_baseline = written("good.json", baseline)
    nan_report = written("nan report.json", changed(report, kl_mean=float("nan")))
    cases.append(bad("check: report with NaN", "check", "--report", nan_report, "--baseline",
                     good_baseline, words=["--report", str(nan_report)]))
    result = root / "result kept out.json"
    cases.append(bad("check: --junit under a file", "check", "--report", good_report, "--baseline",
                     good_baseline, "--result", result, "--junit", corpus["blocker"] / "j.xml",
                     words=["--junit", str(corpus["blocker"])], absent=[result]))
    odd = corpus["root"] / ODD_FOLDER / "baseline.json"
    odd.write_bytes(b"\xef\xbb\xbf" + json.dumps(baseline).encode())
    cases.append(odd_but_valid("check --update-baseline over a baseline with a BOM, at an odd path",
                               "check", "--report", good_report, "--baseline", odd,
                               "--update-baseline", stdout_words=["baseline written"]))
    return cases
