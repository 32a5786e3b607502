"""pipeline.cache and the work it saves: entries checked by hash and rebuilt, cached runs identical to
uncached ones, calibration of the float .tflite identical to the converter's own, parallel parity
identical to in-process parity."""

import json
import os

import numpy as np
import pytest

from pipeline.core import cache
from pipeline.stages import convert, evalset, parity_metrics, parity_workers, verify
from pipeline.stages.preprocess import Preprocessing
from tests.conftest import make_images, run_cli

SMALL = ["--alpha", "0.35", "--resolution", "96", "--weights", "random", "--seed", "0"]


def test_an_entry_is_returned_as_stored(tmp_path):
    store = cache.Cache(tmp_path)
    made = []
    value = store.get("kind", cache.key("a", 1), lambda: made.append(1) or b"payload", "thing")
    again = store.get("kind", cache.key("a", 1), lambda: made.append(1) or b"other", "thing")
    assert value == again == b"payload" and made == [1]
    assert [s for _, s, _ in store.events] == ["made", "hit"]
    assert cache.key("a", 1) != cache.key("a", 2)


@pytest.mark.parametrize("damage", ["truncate", "edit", "empty"])
def test_a_damaged_entry_is_rebuilt_and_said_in_one_line(tmp_path, capsys, damage):
    store = cache.Cache(tmp_path)
    entry = cache.key("x")
    store.get("kind", entry, lambda: b"0123456789" * 100, "thing")
    path = store._path("kind", entry)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2],
                      "edit": data[:-1] + bytes([data[-1] ^ 1]),
                      "empty": b""}[damage])
    capsys.readouterr()
    fresh = cache.Cache(tmp_path)
    value = fresh.get("kind", entry, lambda: b"0123456789" * 100, "thing")
    assert value == b"0123456789" * 100
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0] and str(path) in lines[0], lines
    assert fresh.events == [("kind", "rebuilt", "thing")]
    assert path.read_bytes() == data  # rewritten whole
    assert cache.Cache(tmp_path).read("kind", entry) == b"0123456789" * 100


def test_a_disabled_cache_stores_nothing(tmp_path):
    store = cache.Cache(None)
    assert store.get("kind", cache.key(1), lambda: b"v", "thing") == b"v"
    assert store.events == [] and not any(tmp_path.iterdir())


def test_an_unwritable_cache_is_warned_about_and_the_run_goes_on(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = cache.Cache(blocker)
    assert store.get("kind", cache.key(1), lambda: b"v", "thing") == b"v"
    assert "continuing without it" in capsys.readouterr().err
    assert store.root is None


def test_folder_digest_reads_contents_only_when_names_sizes_or_mtimes_change(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.bin")
        files[-1].write_bytes(bytes([i]) * 10)
    reads = []

    def digest(paths):
        reads.append(len(paths))
        return "".join(open(p, "rb").read().hex() for p in paths)

    store = cache.Cache(tmp_path / "cache")
    first = cache.files_digest(store, files, digest)
    assert cache.files_digest(store, files, digest) == first and reads == [3]
    files[1].write_bytes(b"changed!!!")  # new size (and mtime)
    cache.files_digest(store, files, digest)
    assert reads == [3, 3]


def test_calibrating_the_float_tflite_is_the_converters_calibrate_only_step(small_built,
                                                                           small_calibration):
    """The export calibrates the float .tflite it already has; TFLite's converter would convert
    the Keras model again and calibrate that. Both must give the same bytes."""
    import contextlib
    import io

    import tensorflow as tf

    arrays = small_calibration.arrays[:6]
    converter = convert.calibrating_converter(small_built, arrays, True, "probabilities")
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = convert.settle_ranges(converter.convert())
    assert convert.calibrate_model(small_built, arrays) == theirs


def test_cached_calibration_and_float_model_give_the_same_int8_model(small_built, small_calibration,
                                                                    tmp_path):
    arrays = small_calibration.arrays[:6]
    cfg = convert.ConvertConfig("int8", ranges="percentile")
    uncached = convert.convert(small_built, arrays, cfg)
    store = cache.Cache(tmp_path)
    cold = convert.convert(small_built, arrays, cfg, store=store)
    warm_store = cache.Cache(tmp_path)
    warm = convert.convert(small_built, arrays, cfg, store=warm_store)
    assert uncached.tflite == cold.tflite == warm.tflite
    assert {s for _, s, _ in warm_store.events} == {"hit"} and len(warm_store.events) == 3


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    # More than parity_workers.MIN_IMAGES_FOR_WORKERS, so parity runs in worker processes.
    return make_images(tmp_path_factory.mktemp("many"), classes=("n01440764", "n02102040"),
                       per_class=150, size=(100, 100), seed=3)


def test_parity_in_worker_processes_equals_parity_in_this_one(small_built, small_float, small_int8,
                                                              many_images):
    from pipeline.device.runner import Runner, load_runtime

    eval_set = evalset.eval_set_from_folder(many_images, small_built)
    assert len(eval_set.paths) >= parity_workers.MIN_IMAGES_FOR_WORKERS
    spec = Preprocessing(resolution=96)
    parallel = verify.verify(small_built, small_float.tflite, small_int8.tflite, eval_set, spec,
                             threads=2)
    serial = verify.verify(small_built, small_float.tflite, small_int8.tflite, eval_set, spec,
                           threads=1)
    assert parallel.to_json() == serial.to_json()
    # And both equal what one two-threaded interpreter gives (how parity ran before workers).
    from pipeline.stages.preprocess import load_images

    arrays = load_images(eval_set.paths[:64], spec).arrays
    two_threads = Runner(load_runtime()[2], model_content=small_int8.tflite, threads=2)(arrays)
    outputs = parity_workers.ParityWorkers(1).submit(small_int8.tflite, eval_set.paths[:64], spec)()
    assert np.array_equal(parity_metrics.as_logits(two_threads, "probabilities"), outputs.logits)


def test_a_cached_float_reference_serves_the_same_images_in_another_folder(small_built, small_float,
                                                                           small_int8, image_folder,
                                                                           tmp_path):
    """The float half is keyed by the images' names and contents, not their folder: the same images
    elsewhere (a copy) hit the entry, and parity is reported with the paths of the set at hand."""
    import shutil

    from pipeline.core.cache import Cache

    store = Cache(tmp_path / "cache")
    spec = Preprocessing(resolution=96)
    flat = tmp_path / "images"  # unlabelled: the fixture's class names are no ImageNet labels
    flat.mkdir()
    for image in sorted(image_folder.rglob("*.jpg")):
        shutil.copy(image, flat / f"{image.parent.name}_{image.name}")
    here = evalset.eval_set_from_folder(flat, small_built)
    copy = evalset.eval_set_from_folder(shutil.copytree(flat, tmp_path / "copy"), small_built)
    first = verify.verify(small_built, small_float.tflite, small_int8.tflite, here, spec, store=store)
    again = verify.verify(small_built, small_float.tflite, small_int8.tflite, copy, spec, store=store)
    assert ("float-reference", "hit") in {(e["kind"], e["state"]) for e in store.summary()["entries"]}
    assert again.per_image.images == first.per_image.images
    assert {**again.to_json(), "source": None} == {**first.to_json(), "source": None}
    assert again.to_json()["source"].startswith(str(tmp_path / "copy"))


def _numbers(report):
    keep = dict(report)
    for volatile in ("timings_s", "cache", "latency_ms", "latency_ratio", "benchmark", "command",
                     "machine"):
        keep.pop(volatile)
    return keep


def test_cached_and_uncached_exports_are_identical_and_a_damaged_entry_is_rebuilt(tmp_path,
                                                                                  many_images):
    calibration = make_images(tmp_path / "cal", per_class=15)
    args = [*SMALL, "--quantize", "int8", "--calibration", calibration, "--calibration-samples",
            "20", "--eval", many_images, "--eval-samples", "60", "--benchmark-runs", "3"]
    folder = tmp_path / "cache"
    runs = {}
    for name, extra in (("uncached", ["--no-cache"]), ("cold", ["--cache-dir", folder]),
                        ("warm", ["--cache-dir", folder])):
        result = run_cli("export", *args, *extra, "--output", tmp_path / name)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = (result, json.loads((tmp_path / name / "report.json").read_text()))
    models = {n: (tmp_path / n / "model.tflite").read_bytes() for n in runs}
    assert models["uncached"] == models["cold"] == models["warm"]
    assert _numbers(runs["uncached"][1]) == _numbers(runs["cold"][1]) == _numbers(runs["warm"][1])
    assert runs["uncached"][1]["cache"] == {"dir": None, "entries": []}
    states = {e["kind"]: e["state"] for e in runs["warm"][1]["cache"]["entries"]}
    assert states == {"float-tflite": "hit", "calibrated": "hit", "float-reference": "hit"}
    assert {e["state"] for e in runs["cold"][1]["cache"]["entries"]} == {"made"}
    assert "## Cache" in (tmp_path / "warm" / "report.md").read_text()

    # A truncated float reference and an edited float model: each rebuilt, one line each.
    for kind, damage in (("float-reference", lambda d: d[: len(d) // 3]),
                         ("float-tflite", lambda d: d[:100] + bytes([d[100] ^ 0xFF]) + d[101:])):
        (entry,) = [p for p in (folder / kind).rglob("*") if p.is_file()]
        entry.write_bytes(damage(entry.read_bytes()))
    result = run_cli("export", *args, "--cache-dir", folder, "--output", tmp_path / "repaired")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("cache:")]
    assert len(lines) == 2 and all("corrupt" in line for line in lines), lines
    assert sorted(line.split()[1] for line in lines) == ["float-reference", "float-tflite"], lines
    repaired = json.loads((tmp_path / "repaired" / "report.json").read_text())
    assert (tmp_path / "repaired" / "model.tflite").read_bytes() == models["uncached"]
    assert _numbers(repaired) == _numbers(runs["uncached"][1])
    states = {e["kind"]: e["state"] for e in repaired["cache"]["entries"]}
    assert states["float-tflite"] == "rebuilt" and states["float-reference"] == "rebuilt"


def test_a_cache_dir_that_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    result = run_cli("export", *SMALL, "--cache-dir", blocker, "--output", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --cache-dir")
    assert not (tmp_path / "out").exists()


def test_pruning_frees_stale_entries_and_the_live_ones_still_hit(tmp_path):
    """A cache filled with entries last used 40 days ago and entries used now: `pipeline.cache
    --older-than 30d` removes exactly the stale ones and says how much it freed, the live ones
    still hit; `--max-size` then drops the least recently used; --dry-run removes nothing."""
    import time

    from pipeline.core.cache import Cache, key
    from tests.conftest import run_cli

    root = tmp_path / "cache"
    store = Cache(root)
    live = {key("live", i): bytes([i]) * 50_000 for i in range(3)}
    stale = {key("stale", i): bytes([i]) * 70_000 for i in range(2)}
    for entry, payload in {**live, **stale}.items():
        store.put("calibrated", entry, payload, "test")
    long_ago = time.time() - 40 * 86400
    for entry in stale:
        os.utime(store._path("calibrated", entry), (long_ago, long_ago))
    (root / "calibrated" / ".tmp-killed").write_bytes(b"x" * 10)  # a killed write's leftover
    os.utime(root / "calibrated" / ".tmp-killed", (long_ago, long_ago))

    dry = run_cli("cache", "--cache-dir", root, "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0 and "would free 0.1 MB in 3 entries" in dry.stdout, dry.stdout
    assert all(store._path("calibrated", e).exists() for e in stale)

    done = run_cli("cache", "--cache-dir", root, "--older-than", "30d")
    assert done.returncode == 0, done.stderr
    assert "freed 0.1 MB in 3 entries; kept 0.2 MB in 3" in done.stdout
    assert not (root / "calibrated" / ".tmp-killed").exists()
    fresh = Cache(root)
    assert all(fresh.lookup("calibrated", e, "test") == p for e, p in live.items())
    assert all(fresh.lookup("calibrated", e, "test") is None for e in stale)

    # LRU by last use: made an hour ago but hit just now, `used` outlives `idle` (made later,
    # never hit since) when the cache must fit 120 kB.
    used, idle, recent = live
    for entry, seconds_ago in ((used, 3600), (idle, 2000), (recent, 1800)):
        os.utime(store._path("calibrated", entry), (time.time() - seconds_ago,) * 2)
    assert Cache(root).lookup("calibrated", used, "test") == live[used]
    fitted = run_cli("cache", "--cache-dir", root, "--max-size", "120kB")
    assert fitted.returncode == 0 and "freed 0.1 MB in 1 entries; kept 0.1 MB in 2" in fitted.stdout
    assert fresh.lookup("calibrated", idle, "test") is None
    assert fresh.lookup("calibrated", used, "test") == live[used]
    assert fresh.lookup("calibrated", recent, "test") == live[recent]
    bad = run_cli("cache", "--cache-dir", root, "--older-than", "soon")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --older-than 'soon' is not an age")
