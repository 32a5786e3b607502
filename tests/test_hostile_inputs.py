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
    if result.returncode < 0:
        problems.append(f"crashed: killed by signal {-result.returncode}")  # a segfault is -11
    if "Traceback" in result.stderr:
        problems.append("crashed: a traceback")
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
    int32 token ids, no input at all."""
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
        "no_inputs": tflite(lambda: tf.nn.softmax(tf.ones([1, 4]))),
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
def tiny_models(corpus):
    return _tiny_models(corpus["root"] / "models")


@pytest.fixture(scope="module")
def models(corpus, tiny_models, export):
    """Model files that are not a classifier the pipeline can use, beside the export's good one."""
    folder = corpus["root"] / "models"
    found = dict(tiny_models)
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


# --- the families ----------------------------------------------------------------------------


def test_image_files_pillow_refuses(corpus):
    """preprocess, calibrate and golden: the readers of image files."""
    hostile, root = corpus["hostile_images"], corpus["root"]
    hostile_folder = hostile["bomb.png"].parent
    odd_folder = corpus["odd_images"][0].parent
    cases = [bad(f"preprocess {name}", "preprocess", path, words=[str(path)])
             for name, path in hostile.items()]
    cases += [
        bad("calibrate a folder of undecodable images", "calibrate", "--calibration", hostile_folder,
            words=["none of the 4 images", str(hostile_folder)]),
        odd_but_valid("calibrate odd modes at an odd path", "calibrate", "--calibration", odd_folder,
                      "--resolution", "96", stdout_words=['"used": 4', '"skipped": []']),
    ]
    out, odd_out = root / "golden from hostile", root / ODD_FOLDER / "golden out"
    same_names = root / "photos with one name"
    for sub in ("a", "b"):
        (same_names / sub).mkdir(parents=True)
        shutil.copy(corpus["odd_images"][0], same_names / sub / "photo.png")
    cases += [
        bad("golden from two photos of one name", "golden", "--images", same_names, "--output", out,
            words=["photo_photo", "rename one"], absent=[out]),
        bad("golden from undecodable photos", "golden", "--images", hostile_folder, "--output", out,
            words=["--images", str(hostile_folder)], absent=[out]),
        odd_but_valid("golden from odd modes into an odd path", "golden", "--images", odd_folder,
                      "--output", odd_out,
                      creates=[odd_out / "photo_cmyk.input", odd_out / "photo_one_pixel.rgb"]),
    ]
    run_cases(cases)


def test_training_and_model_building_inputs(corpus):
    """train, build, analyze, compare, convert, diagnose and export, each refused before it does
    the expensive part."""
    root, blocker = corpus["root"], corpus["blocker"]
    hostile_folder = corpus["hostile_images"]["bomb.png"].parent
    with_bad_class = make_images(root / "with a bad class", per_class=3)
    shutil.copytree(hostile_folder, with_bad_class / "broken")
    labels = root / "labels latin1.txt"
    labels.write_bytes(b"caf\xe9\nth\xe9\n")
    out = root / "out"
    cases = [
        bad("train: a class of undecodable images", "train", "--data", with_bad_class, "--weights",
            "random", "--resolution", "96", "--alpha", "0.35", "--output", out,
            words=["'broken'", "no decodable", str(with_bad_class)], absent=[out]),
        bad("build: labels not UTF-8", "build", *SMALL, "--classes", "2", "--labels", labels,
            words=[str(labels), "UTF-8"]),
        bad("analyze: --json under a file", "analyze", *SMALL[:4], "--json", blocker / "a.json",
            words=["--json", str(blocker)]),
        bad("compare: calibration images all undecodable", "compare", "--models", "v3-small",
            "--resolution", "96", "--calibration", hostile_folder, "--output", out,
            words=["could be decoded", str(hostile_folder)], absent=[out]),
        bad("convert: unknown --quantize", "convert", *SMALL, "--quantize", "int3", "--out",
            out / "m.tflite", words=["--quantize int3"], absent=[out]),
        bad("diagnose: --output is a file", "diagnose", *SMALL, "--calibration", corpus["images"],
            "--output", blocker, words=["--output", str(blocker)], untouched=[blocker]),
        bad("export: calibration images all undecodable", "export", *SMALL, "--calibration",
            hostile_folder, "--output", out, words=["could be decoded", str(hostile_folder)],
            absent=[out]),
    ]
    run_cases(cases)


def test_targets_with_shell_syntax_are_refused_and_never_run(corpus, tiny_models):
    """benchmark and verify --target: refused in one line, and neither ssh nor adb ever runs (the
    ones on PATH here only leave a mark)."""
    env = corpus["fake_tools_env"]
    model = tiny_models["vector_input"]
    cases = []
    for name, target in TARGETS_WITH_SHELL_SYNTAX.items():
        if name == "newline":
            continue  # verify's below
        out = corpus["root"] / f"bench {name}"
        cases.append(bad(f"benchmark --target {name}", "benchmark", model, "--target", target,
                         "--output", out, words=["--target", repr(target)], absent=[out], env=env))
    cases.append(bad("verify --target with a newline", "verify", "--tflite", model, "--target",
                     TARGETS_WITH_SHELL_SYNTAX["newline"], "--eval", corpus["images"],
                     words=["--target", repr(TARGETS_WITH_SHELL_SYNTAX["newline"])], env=env))
    cases.append(bad("benchmark --remote-python with shell syntax", "benchmark", model, "--target",
                     "ssh://pi@board", "--remote-python", "python3;reboot", words=["--remote-python"],
                     env=env))
    run_cases(cases)
    ran = sorted(p.name for p in corpus["fakebin"].glob("*-was-run"))
    assert not ran, f"a refused target still ran: {ran}"


def test_model_files_that_are_not_usable_classifiers(corpus, models):
    """inspect, predict, benchmark and verify --tflite on corrupt, truncated, empty and non-TFLite
    files, and on .tflite files that are not image classifiers."""
    image = corpus["odd_images"][0]
    cases = [bad(f"inspect {name}", "inspect", models[name], words=[str(models[name])])
             for name in ("random_bytes", "png_renamed", "cut_in_half", "zero_bytes", "a_folder")]
    out = corpus["root"] / "bench out"
    cases += [
        bad("benchmark identifier_then_noise", "benchmark", models["identifier_then_noise"],
            "--output", out, words=[str(models["identifier_then_noise"])], absent=[out]),
        bad("benchmark token_ids (random ids outside its vocabulary)", "benchmark",
            models["token_ids"], "--benchmark-runs", "2", "--threads-sweep", "1", "--output", out,
            words=[str(models["token_ids"])], absent=[out]),
        bad("verify --tflite two_inputs", "verify", "--tflite", models["two_inputs"], "--eval",
            corpus["images"], *SMALL, words=["--tflite", str(models["two_inputs"]), "2 inputs"]),
    ]
    for name in ("vector_input", "token_ids", "no_inputs"):
        cases.append(bad(f"predict {name}", "predict", models[name], image,
                         words=[str(models[name])]))
    cases += [
        odd_but_valid("inspect two_inputs: says the clients refuse it", "inspect",
                      models["two_inputs"], stdout_words=["REFUSES"]),
        odd_but_valid("predict odd modes with a model at an odd path", "predict", models["odd_path"],
                      *corpus["odd_images"], stdout_words=["cmyk.jpg", "gray16.png", "palette.png",
                                                          "one_pixel.png"]),
    ]
    run_cases(cases)


def test_export_folders_with_bad_labels_configs_and_baselines(corpus, export):
    """predict and deploy on an export folder whose labels.txt or model_config.json is wrong, and
    check on broken baselines and reports."""
    root = corpus["root"] / "folders"
    image = corpus["odd_images"][0]
    app = corpus["root"] / "app"
    shutil.copytree(REPO / "android_demo", app, ignore=shutil.ignore_patterns("build", ".gradle"))
    labels = _labels_variants(export)
    cases = []
    for command, name in (("predict", "one label too few"), ("deploy", "a blank line"),
                          ("deploy", "a duplicate line"), ("predict", "bytes that are not UTF-8")):
        folder = export_variant(export, root / f"{command} labels with {name}", labels=labels[name])
        args = (folder, image) if command == "predict" else ("android", folder, app)
        cases.append(bad(f"{command}: labels with {name}", command, *args,
                         words=[str(folder / "labels.txt")], untouched=[app]))
    configs = {
        ("predict", "NaN std"): _set(["preprocessing", "normalize", "std"], float("nan")),
        ("predict", "Infinity crop"): _set(["preprocessing", "crop", "crop_fraction"], float("inf")),
        ("predict", "a model file outside the folder"): _set(["model_file"], "../../model.tflite"),
        ("deploy", "no input"): _set(["input"], _DELETE),
        ("deploy", "a scale that is a string"): _set(["input", "quantization", "scale"], "0.0078"),
    }
    for (command, name), change in configs.items():
        folder = export_variant(export, root / f"{command} config {name}",
                                config=_config_with(export, change))
        args = (folder, image) if command == "predict" else ("android", folder, app)
        cases.append(bad(f"{command}: config with {name}", command, *args,
                         words=[str(folder / "model_config.json")], untouched=[app]))

    lines = (export / "labels.txt").read_bytes().decode().splitlines()
    bom_crlf = ("\ufeff" + "\r\n".join(lines) + "\r\n").encode()
    odd = export_variant(export, corpus["root"] / ODD_FOLDER / "export, BOM and CRLF", labels=bom_crlf)
    odd_app = corpus["root"] / ODD_FOLDER / "android demo"
    shutil.copytree(app, odd_app)
    cases += [
        odd_but_valid("predict: labels with a BOM and CRLF, at an odd path", "predict", odd, image,
                      "--top-k", "1000", stdout_words=["tench"], stdout_lacks=["\ufeff", "\r"]),
        odd_but_valid("deploy: labels with a BOM and CRLF, at odd paths", "deploy", "android", odd,
                      odd_app, creates=[odd_app / "app/src/main/assets/model.tflite"]),
    ]
    cases += _check_cases(corpus, export)
    run_cases(cases)
    deployed = (odd_app / "app/src/main/assets/labels.txt").read_bytes()
    assert deployed == (export / "labels.txt").read_bytes(), "deploy kept the BOM or the CRLF"


def _check_cases(corpus, export):
    """check: baselines and reports that are not JSON, miss keys or hold NaN."""
    from pipeline.stages import check

    root = corpus["root"] / "check"
    root.mkdir()
    report = json.loads((export / "report.json").read_text())
    baseline = check.baseline_from_report(report)

    def written(name, content):
        path = root / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    def changed(source, **fields):
        return json.dumps(dict(source, **fields))  # NaN and Infinity as JSON's non-standard tokens

    good_report, good_baseline = export / "report.json", written("good.json", baseline)
    baselines = {
        "not JSON": written("not json.json", '{"float": '),
        "NaN agreement": written("nan.json", changed(baseline, agreement_top1=float("nan"))),
        "missing keys": written("missing.json", {"format_version": 2}),
    }
    cases = []
    for name, path in baselines.items():
        out = root / f"result {name}.json"
        cases.append(bad(f"check: baseline {name}", "check", "--report", good_report, "--baseline",
                         path, "--result", out, words=["--baseline", str(path)], absent=[out]))
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
