"""Property-based tests (hypothesis): whatever bytes a user hands the pipeline, each reader returns
what it promises or raises PipelineInputError naming the file; nothing else escapes, and nothing
crashes the process.

Readers: images (pipeline.preprocess), labels files (build.read_labels and the readers sharing it),
JSON configs (check.load_json, deploy.read_config, predict.load_classifier, deploy.check_files),
and `.tflite` flatbuffers (inspect, metadata, convert, predict, deploy). Inputs are arbitrary bytes
and real files (Pillow images, a tiny TensorFlow model) damaged at random. Examples are
derandomized so CI sees the same cases every run.

Damaged flatbuffers go to native code (LiteRT, flatbuffers' GenText), which can segfault: those
readers run in a child process (tests/flatbuffer_cases.py) that records each input before reading
it, so a crash fails the test naming the input instead of killing pytest.
"""

import io
import json
import math
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.core import readers, tflite
from pipeline.stages import build, check, deploy, inspection as inspect, predict
from pipeline.core.errors import PipelineInputError
from pipeline.stages.preprocess import IMAGE_EXTENSIONS, ImageDecodeError, Preprocessing, load_images, preprocess

HERE = Path(__file__).resolve().parent
CASES_SCRIPT = HERE / "flatbuffer_cases.py"


def props(max_examples):
    """Reproducible settings: the same examples every run (derandomize), no per-example deadline
    (a 2-core CI box stalls at times), module-scoped scratch folders allowed."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


def _write(folder, name, data):
    path = folder / name
    path.write_bytes(data)
    return path


def mutations(base):
    """Damaged copies of `base`: bytes overwritten, 4-byte words set to boundary or random values
    (flatbuffer offsets and lengths), cuts, deletions and insertions, up to four in a row."""
    n = len(base)
    edit = st.one_of(
        st.tuples(st.just("byte"), st.integers(0, n - 1), st.integers(0, 255)),
        st.tuples(st.just("word"), st.integers(0, n // 4 - 1),
                  st.sampled_from([0, 1, 4, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1)),
        st.tuples(st.just("cut"), st.integers(0, n - 1)),
        st.tuples(st.just("delete"), st.integers(0, n - 1), st.integers(1, 64)),
        st.tuples(st.just("insert"), st.integers(0, n), st.binary(min_size=1, max_size=64)),
    )

    def apply(edits):
        data = bytearray(base)
        for kind, at, *rest in edits:
            at = at % max(len(data), 1)
            if kind == "byte" and data:
                data[at] = rest[0]
            elif kind == "word" and len(data) >= 4:
                at = min(at * 4 % len(data), len(data) - 4)
                data[at:at + 4] = struct.pack("<I", rest[0])
            elif kind == "cut":
                del data[at:]
            elif kind == "delete":
                del data[at:at + rest[0]]
            elif kind == "insert":
                data[at:at] = rest[0]
        return bytes(data)

    return st.lists(edit, min_size=1, max_size=4).map(apply)


# --- images -----------------------------------------------------------------------------------

SPEC = Preprocessing(resolution=16)
EXTENSIONS = tuple(sorted(set(IMAGE_EXTENSIONS) | {".gif", ".tif", ".tiff"}))
# What each format's header starts with, so that arbitrary bytes also reach the decoders rather
# than stopping at "cannot identify".
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\x00\x01\x00\x00WEBPVP8 ",
         b"II*\x00", b"MM\x00*", b"BM"]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}


def assert_model_input(x, spec):
    lo, hi = spec.value_range()
    assert x.dtype == np.float32 and x.shape == (spec.resolution, spec.resolution, 3)
    assert np.isfinite(x).all()
    assert x.min() >= np.float32(lo) and x.max() <= np.float32(hi)


def check_image_file(path, spec=SPEC):
    """The property for one file: load_images lists it as loaded or skipped (with a reason), never
    raises; preprocess returns the same tensor or raises ImageDecodeError naming the file."""
    loaded = load_images([path], spec, workers=1)
    assert len(loaded.paths) + len(loaded.skipped) == 1
    try:
        x = preprocess(path, spec)
    except PipelineInputError as error:
        assert isinstance(error, ImageDecodeError) and str(path) in str(error)
        assert loaded.skipped and loaded.skipped[0][0] == str(path)
        reason = loaded.skipped[0][1]
        assert isinstance(reason, str) and reason and reason == error.reason
        return None
    assert not loaded.skipped
    assert_model_input(x, spec)
    assert np.array_equal(loaded.arrays[0], x)
    return x


@props(250)
@given(magic=st.sampled_from(MAGIC), data=st.binary(max_size=2048), extension=st.sampled_from(EXTENSIONS))
@example(magic=b"", data=b"", extension=".jpg")
def test_arbitrary_bytes_as_an_image_are_skipped_or_a_typed_error(scratch, magic, data, extension):
    check_image_file(_write(scratch, "arbitrary" + extension, magic + data))


def _noise(mode, size, seed):
    """An image of `mode` whose bytes are random: every sample value the mode can hold, NaN and
    infinities included for F, negative ones for I."""
    rng = np.random.default_rng(seed)
    raw = rng.bytes(len(Image.new(mode, size).tobytes()))
    image = Image.frombytes(mode, size, raw)
    if mode in ("P", "PA"):
        image.putpalette(rng.bytes(768))
    return image


def _base_images():
    """Real files in every format the readers meet, from Pillow: what gets damaged below."""
    files = {}
    rgb = _noise("RGB", (24, 16), 0)
    for fmt, extension in FORMATS.items():
        buffer = io.BytesIO()
        rgb.save(buffer, format=fmt)
        files[f"plain{extension}"] = buffer.getvalue()
    exif = rgb.getexif()
    exif[0x0112] = 6
    for name, image, kwargs in (
            ("exif.jpg", rgb, {"format": "JPEG", "exif": exif, "progressive": True}),
            ("palette.png", _noise("P", (24, 16), 1), {"format": "PNG", "transparency": 3}),
            ("sixteen.png", _noise("I;16", (24, 16), 2), {"format": "PNG"}),
            ("lzw.tif", _noise("CMYK", (24, 16), 3), {"format": "TIFF", "compression": "tiff_lzw"}),
            ("alpha.webp", _noise("RGBA", (24, 16), 4), {"format": "WEBP", "lossless": True}),
            ("rle.bmp", _noise("L", (24, 16), 5), {"format": "BMP"})):
        buffer = io.BytesIO()
        image.save(buffer, **kwargs)
        files[name] = buffer.getvalue()
    frames = [_noise("P", (24, 16), 6), _noise("P", (24, 16), 7)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    files["animated.gif"] = buffer.getvalue()
    return files


BASE_IMAGES = _base_images()


@props(300)
@given(st.sampled_from(sorted(BASE_IMAGES)).flatmap(
    lambda name: st.tuples(st.just(name), mutations(BASE_IMAGES[name]))))
def test_damaged_real_images_are_skipped_or_a_typed_error(scratch, case):
    name, data = case
    check_image_file(_write(scratch, "damaged_" + name, data))


def test_the_undamaged_base_images_all_decode(scratch):
    # The damage above starts from files that work: otherwise it tests nothing.
    for name, data in BASE_IMAGES.items():
        assert check_image_file(_write(scratch, "base_" + name, data)) is not None, name


def _saveable():
    """{mode: [formats Pillow writes it in]}, found by writing a 2×2 image of each."""
    table = {}
    for mode in Image.MODES:
        table[mode] = []
        for fmt in FORMATS:
            try:
                Image.new(mode, (2, 2)).save(io.BytesIO(), format=fmt)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            table[mode].append(fmt)
    return table


SAVEABLE = _saveable()


@props(300)
@given(mode=st.sampled_from(sorted(Image.MODES)), width=st.integers(1, 300), height=st.integers(1, 300),
       seed=st.integers(0, 2**32 - 1), orientation=st.none() | st.integers(0, 9) | st.just(65535),
       resolution=st.integers(1, 300),
       crop=st.floats(0, 1, exclude_min=True) | st.just(1.0) | st.just(5e-324),
       as_file=st.booleans(), format_index=st.integers(0, len(FORMATS) - 1))
@example(mode="La", width=3, height=2, seed=0, orientation=None, resolution=8, crop=1.0,
         as_file=False, format_index=0)
@example(mode="F", width=300, height=5, seed=1, orientation=6, resolution=300, crop=1.0,
         as_file=True, format_index=0)
def test_every_mode_size_orientation_crop_and_resolution_give_the_model_input(
        scratch, mode, width, height, seed, orientation, resolution, crop, as_file, format_index):
    image = _noise(mode, (width, height), seed)
    if orientation is not None:
        image.getexif()[0x0112] = orientation
    spec = Preprocessing(resolution=resolution, crop_fraction=crop)
    formats = SAVEABLE[mode]
    if as_file and formats:
        fmt = formats[format_index % len(formats)]
        buffer = io.BytesIO()
        kwargs = {"exif": image.getexif()} if orientation is not None and fmt in ("JPEG", "PNG", "WEBP") else {}
        image.save(buffer, format=fmt, **kwargs)
        path = _write(scratch, f"mode{FORMATS[fmt]}", buffer.getvalue())
        x = check_image_file(path, spec)
        assert x is not None, f"{mode} {width}×{height} saved as {fmt} does not decode"
    else:
        assert_model_input(preprocess(image, spec), spec)


def _png_header(width, height):
    """A PNG that only declares its size (a few bytes of pixels): what a decompression bomb is."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _bmp_header(width, height):
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 14 + len(info)) + info + b"\x00" * 64


@props(40)
@given(kind=st.sampled_from(["png", "bmp"]), ratio=st.floats(1.0001, 30), aspect=st.floats(0.05, 20),
       warnings_are_errors=st.booleans())
def test_decompression_bombs_are_too_large_to_decode_not_a_crash(scratch, kind, ratio, aspect,
                                                                   warnings_are_errors):
    # Between 1x and 2x Pillow's limit, Image.open only warns; above, it raises. Both are "too
    # large", whatever the warnings filter says.
    pixels = Image.MAX_IMAGE_PIXELS * ratio
    width = max(1, int(math.sqrt(pixels * aspect)))
    height = int(pixels // width) + 1
    if kind == "bmp" and (width >= 2**31 or height >= 2**31):
        return
    data = (_png_header if kind == "png" else _bmp_header)(width, height)
    path = _write(scratch, f"bomb.{kind}", data)
    with warnings.catch_warnings():
        warnings.simplefilter("error" if warnings_are_errors else "ignore", Image.DecompressionBombWarning)
        loaded = load_images([path], SPEC, workers=1)
        with pytest.raises(ImageDecodeError, match="too large to decode safely") as raised:
            preprocess(path, SPEC)
    assert str(path) in str(raised.value)
    assert [p for p, _ in loaded.skipped] == [str(path)]
    assert "too large to decode safely" in loaded.skipped[0][1]


# --- labels files -----------------------------------------------------------------------------

BOM = "\ufeff"
label_text = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1,
                     max_size=12).map(str.strip).filter(bool)


def expected_labels(data):
    """An independent statement of the format: UTF-8, optional BOM, lines split at LF (a CR before
    it dropped), each stripped, blank lines only at the end."""
    text = data.decode("utf-8").removeprefix(BOM)
    lines = [line.strip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def read_both(path, data, expected):
    """build.read_labels (a file) and readers.parse_labels (the bytes deploy and predict read) on the
    same labels: one reader, so they must agree exactly, in result or in refusal."""
    outcomes = []
    for read in (lambda: build.read_labels(path, expected), lambda: readers.parse_labels(data, path)):
        try:
            outcomes.append(("ok", read()))
        except PipelineInputError as error:
            assert str(path) in str(error), error
            outcomes.append(("refused", str(error)))
    return outcomes


@props(300)
@given(data=st.binary(max_size=300) | st.lists(st.text(max_size=10), max_size=8).flatmap(
    lambda lines: st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\u2028", "\x85"]).map(
        lambda sep: sep.join(lines).encode("utf-8"))), expected=st.none() | st.integers(0, 8))
@example(data=b"\xef\xbb\xbfa\r\nb\r\n", expected=2)
@example(data=b"a\n\nb\n", expected=2)
@example(data=b"a\nb\na\n", expected=3)
def test_labels_from_arbitrary_bytes_are_the_labels_or_a_typed_error(scratch, data, expected):
    path = _write(scratch, "labels.txt", data)
    try:
        labels = build.read_labels(path, expected)
    except PipelineInputError as error:
        assert str(path) in str(error)
        refused = True
    else:
        refused = False
        assert labels == expected_labels(data)
        assert expected is None or len(labels) == expected
        assert labels and all(labels) and len(set(labels)) == len(labels)
    if expected is None:  # deploy and predict pass no count
        both = read_both(path, data, None)
        assert both[0][0] == both[1][0] == ("refused" if refused else "ok")
        assert both[0][1] == both[1][1] or refused


@props(150)
@given(labels=st.lists(label_text, min_size=1, max_size=20, unique=True), bom=st.booleans(),
       crlf=st.booleans(), trailing=st.sampled_from(["", "\n", "\n\n", "\n  \n"]))
def test_well_formed_labels_files_read_back_exactly(scratch, labels, bom, crlf, trailing):
    text = (BOM if bom else "") + ("\r\n" if crlf else "\n").join(labels) + trailing
    path = _write(scratch, "good_labels.txt", text.encode("utf-8"))
    assert build.read_labels(path, len(labels)) == labels
    assert readers.parse_labels(text.encode("utf-8"), path) == labels


@props(200)
@given(labels=st.lists(label_text, min_size=2, max_size=12, unique=True), data=st.data(),
       defect=st.sampled_from(["blank", "duplicate", "not_utf8", "control", "count"]))
def test_broken_labels_files_are_refused_naming_the_file_and_line(scratch, labels, data, defect):
    lines = [label.encode("utf-8") for label in labels]
    at = data.draw(st.integers(1, len(lines) - 1))  # a line after the first: 1-based line at + 1
    expected, words = len(labels), None
    if defect == "blank":
        lines.insert(at, data.draw(st.sampled_from([b"", b"  ", b"\t", b"\r"])))
        expected, words = None, "blank line"
    elif defect == "duplicate":
        lines.insert(at, data.draw(st.sampled_from(lines[:at])))
        expected, words = None, "repeats line"
    elif defect == "not_utf8":
        lines[at] += data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9t\xe9"]))
    elif defect == "control":
        # Inside the label: at its ends they are whitespace, and stripped like spaces.
        control = data.draw(st.sampled_from(["\x00", "\x0b", "\x1c", "\u2028", "\x85", "\r", "\x7f"]))
        lines[at] += (control + "z").encode()
    else:
        expected = len(labels) + data.draw(st.sampled_from([-1, 1, 5]))
    path = _write(scratch, "broken_labels.txt", b"\n".join(lines) + b"\n")
    with pytest.raises(PipelineInputError) as raised:
        build.read_labels(path, expected)
    message = str(raised.value)
    assert str(path) in message
    if defect == "count":
        assert f"has {len(labels)} labels but the model has {expected} outputs" in message
    else:
        assert f"line {at + 1}" in message, message
        if words:
            assert words in message


# --- JSON: the parity baseline and model_config.json ------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=16)


def finite_everywhere(value):
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite_everywhere(v) for v in value)
    if isinstance(value, dict):
        return all(finite_everywhere(v) for v in value.values())
    return True


def strict_json(data):
    """The JSON value of `data` by the standard alone (RFC 8259: no NaN / Infinity, numbers a double
    holds), or a sentinel when it is not JSON."""
    def refuse(_):
        raise ValueError("not JSON")

    def finite(text):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("out of range")
        return value

    try:
        return json.loads(data.decode("utf-8").removeprefix(BOM), parse_constant=refuse,
                          parse_float=finite)
    except (ValueError, RecursionError):
        return NOT_JSON


NOT_JSON = object()
json_documents = (st.binary(max_size=200)
                  | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
                  | st.sampled_from([b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"1e400", b"-1e999",
                                     b"[" * 3000 + b"]" * 3000, b"\xef\xbb\xbf{}", b'{"a": 1',
                                     b"9" * 5000]))


@props(300)
@given(data=json_documents)
def test_load_json_gives_the_json_value_or_a_typed_error(scratch, data):
    path = _write(scratch, "baseline.json", data)
    standard = strict_json(data)
    try:
        value = check.load_json(path, "--baseline")
    except PipelineInputError as error:
        assert str(path) in str(error)
        assert standard is NOT_JSON, f"valid JSON refused: {error}"
        return
    assert standard is not NOT_JSON, f"{data[:80]!r} is not JSON but was read as {value!r:.80}"
    assert value == standard and finite_everywhere(value)


@pytest.fixture(scope="module")
def tiny_models():
    """(plain, with metadata and labels) .tflite bytes of a tiny classifier: an 8×8×3 input, a 3×3
    Conv2D, pooling, a Dense to 3 classes and a softmax. Built once: conversion takes seconds."""
    import keras
    import tensorflow as tf

    from pipeline.stages import metadata

    inputs = keras.Input((8, 8, 3), batch_size=1)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(3)(x)))
    plain = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    labelled = metadata.write_image_classifier_metadata(
        plain, metadata.ModelInfo(name="tiny", description="a tiny classifier"), ["cat", "dog", "eel"],
        [127.0], [127.5], "RGB image, 8x8", "Probabilities of the 3 classes")
    return plain, labelled


def tiny_config():
    """model_config.json of the tiny model, with every field the readers check."""
    return {"model_file": "model.tflite", "labels_file": "labels.txt",
            "input": {"shape": [1, 8, 8, 3], "dtype": "float32"},
            "output": {"shape": [1, 3], "dtype": "float32", "meaning": "probabilities"},
            "preprocessing": Preprocessing(resolution=8).to_config()}


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, prefix + (i,))


def _replace(value, path, new, delete=False):
    if not path:
        return new
    value = json.loads(json.dumps(value))
    node = value
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = new
    return value


@st.composite
def damaged_configs(draw):
    """model_config.json texts: the real config with one node deleted or replaced by any JSON value
    (NaN and infinities written as Python's json writes them), or anything at all."""
    config = tiny_config()
    choice = draw(st.sampled_from(["delete", "replace", "replace", "whole", "bytes"]))
    if choice == "bytes":
        return draw(st.binary(max_size=200))
    if choice == "whole":
        return json.dumps(draw(json_values), allow_nan=True).encode()
    paths = list(_paths(config))[1:]
    path = draw(st.sampled_from(paths))
    new = draw(json_values | st.sampled_from([0, -1, 1.5, "8", True, [], {}, [8], [8, 8, 8], 1e308]))
    damaged = _replace(config, path, new, delete=choice == "delete")
    return json.dumps(damaged, allow_nan=True).encode()


@pytest.fixture(scope="module")
def export_folder(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    (folder / "model.tflite").write_bytes(tiny_models[0])
    (folder / "labels.txt").write_text("cat\ndog\neel\n")
    (folder / "model_config.json").write_text(json.dumps(tiny_config()))
    return folder


def test_the_undamaged_config_is_read_by_every_reader(export_folder):
    classifier = predict.load_classifier(export_folder)
    assert classifier.labels == ["cat", "dog", "eel"] and classifier.spec.resolution == 8
    files = {name: (export_folder / name).read_bytes() for name in deploy.FILES}
    assert deploy.check_files(files, export_folder)["labels.txt"] == "cat\ndog\neel\n"


@props(250)
@given(data=damaged_configs())
@example(data=json.dumps(dict(tiny_config(), preprocessing=dict(
    Preprocessing(resolution=8).to_config(), normalize={"mean": 1e400, "std": 127.5}))).encode()
    .replace(b"Infinity", b"1e400"))
@example(data=b"[" * 3000 + b"]" * 3000)
def test_model_config_readers_take_a_config_or_refuse_it_in_one_typed_error(export_folder, data):
    config_path = export_folder / "model_config.json"
    config_path.write_bytes(data)
    outcomes = {}
    files = {name: (export_folder / name).read_bytes() for name in deploy.FILES}
    for name, read in (("deploy.read_config", lambda: deploy.read_config(data, config_path)),
                       ("predict.load_classifier", lambda: predict.load_classifier(export_folder)),
                       ("deploy.check_files", lambda: deploy.check_files(files, export_folder))):
        try:
            outcomes[name] = read()
        except PipelineInputError as error:
            assert str(export_folder) in str(error), f"{name}: {error}"
            outcomes[name] = None
    classifier = outcomes["predict.load_classifier"]
    if classifier is not None:
        spec = classifier.spec
        assert spec.resolution == 8 and 0 < spec.crop_fraction <= 1 and len(classifier.labels) == 3
        assert math.isfinite(spec.mean) and math.isfinite(spec.std) and spec.std > 0
    if outcomes["deploy.read_config"] is None:  # what read_config refuses, nothing downstream takes
        assert classifier is None and outcomes["deploy.check_files"] is None


# --- .tflite flatbuffers ----------------------------------------------------------------------


def test_a_tensor_name_that_is_not_utf8_is_refused_before_litert(tiny_models, tmp_path):
    # Found by the damaged-model property: LiteRT decodes tensor names as UTF-8 in
    # get_output_details() and raised UnicodeDecodeError from inspect.contract.
    from tensorflow.lite.tools import flatbuffer_utils

    from pipeline.core.readers import parse_model

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tiny_models[0]))
    graph = model.subgraphs[0]
    graph.tensors[graph.outputs[0]].name = b"scores\xc3\x28"
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    path = _write(tmp_path, "bad_name.tflite", data)
    for read in (lambda: parse_model(data, str(path)), lambda: tflite.read_model(path),
                 lambda: inspect.contract(data, where=str(path))):
        with pytest.raises(PipelineInputError, match="not UTF-8"):
            read()


@props(300)
@given(data=st.binary(max_size=600) | st.binary(max_size=600).map(lambda b: b[:4].ljust(4, b"\0") + b"TFL3" + b[4:]))
@example(data=b"")
@example(data=b"\x00\x00\x00\x00TFL3")
def test_arbitrary_bytes_are_not_a_model(scratch, data):
    # Pure-Python readers only: nothing here reaches native code, so it runs in-process.
    from pipeline.core.readers import parse_model

    path = _write(scratch, "arbitrary.tflite", data)
    for read in (lambda: tflite.read_model(path), lambda: parse_model(data, str(path)),
                 lambda: tflite.read_ops(data, str(path)), lambda: tflite.output_kind(data)):
        try:
            read()
        except PipelineInputError as error:
            assert str(path) in str(error) or "the model" in str(error)


def _run_cases(cases, results, timeout=600):
    """Runs tests/flatbuffer_cases.py over `cases` until every case has been read, restarting after
    a crash; returns ([result entries], [(case, reader, return code)] crashes)."""
    crashes, first = [], None
    while True:
        completed = subprocess.run([sys.executable, str(CASES_SCRIPT), str(cases), str(results)]
                                   + ([first] if first else []), capture_output=True, text=True,
                                   timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        entries = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        if completed.returncode == 0:
            return [e for e in entries if "outcome" in e], crashes
        started = [e for e in entries if e.get("start")]
        assert started, f"the case runner failed before any case:\n{completed.stderr[-3000:]}"
        last = started[-1]
        crashes.append((last["case"], last["reader"], completed.returncode))
        names = sorted(p.name for p in cases.glob("*.tflite"))
        later = [n for n in names if n > last["case"]]
        if not later or len(crashes) >= 20:
            return [e for e in entries if "outcome" in e], crashes
        first = later[0]


def test_the_case_runner_reports_a_segfault_naming_the_input(tmp_path):
    # The harness below must be able to fail: a reader that segfaults is caught and named.
    results = tmp_path / "results.jsonl"
    completed = subprocess.run([sys.executable, str(CASES_SCRIPT), "--crash", str(results)],
                               capture_output=True, timeout=60)
    assert completed.returncode != 0
    assert json.loads(results.read_text().splitlines()[-1])["case"] == "crash.tflite"


def test_damaged_models_are_refused_in_one_typed_error_by_every_reader_never_a_crash(
        tiny_models, tmp_path):
    plain, labelled = tiny_models
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "labels.txt").write_text("cat\ndog\neel\n")
    (cases / "model_config.json").write_text(json.dumps(tiny_config()))
    generated = []

    # Hypothesis generates the cases here (derandomized: the same every run); the child process
    # reads them, since a crash there must not take pytest down.
    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate])
    @given(st.sampled_from([("plain", plain), ("labelled", labelled)]).flatmap(
        lambda base: st.tuples(st.just(base[0]), mutations(base[1]))))
    def collect(case):
        generated.append(case)

    collect()
    for i, (base, data) in enumerate([("plain", plain), ("labelled", labelled)] + generated):
        (cases / f"{i:04d}_{base}.tflite").write_bytes(data)
    entries, crashes = _run_cases(cases, tmp_path / "results.jsonl")
    assert not crashes, "readers crashed the process on: " + ", ".join(
        f"{case} in {reader} (exit {rc})" for case, reader, rc in crashes)
    unexpected = [e for e in entries if e["outcome"] == "unexpected"]
    assert not unexpected, f"{len(unexpected)} untyped errors, first {unexpected[0]['case']} in " \
                           f"{unexpected[0]['reader']}:\n{unexpected[0]['detail']}"
    by_case = {}
    for e in entries:
        by_case.setdefault(e["case"], {})[e["reader"]] = e
    # The undamaged models go through every reader; damage is found by some (not only by luck).
    for name in ("0000_plain.tflite", "0001_labelled.tflite"):
        assert all(e["outcome"] == "ok" for e in by_case[name].values()), by_case[name]
    typed = [e for e in entries if e["outcome"] == "typed"]
    assert len(by_case) == len(generated) + 2 and typed
    for e in typed:  # each refusal names the file (deploy names the export's model.tflite)
        assert any(name in e["detail"] for name in (e["case"], "model.tflite", "the model")), e
