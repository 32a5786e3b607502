"""Golden vectors: what the one preprocessing function (and top-k) produces, for apps to match.

For each image: the decoded RGB pixels (before EXIF orientation, as a platform decoder hands them
over), the EXIF orientation, the settings from model_config.json, and the exact input tensor bytes
`preprocess` + input quantization produce. For top-k: output tensor bytes and the classes and
probabilities the pipeline reads from them. The Android app's Kotlin core must reproduce both byte
for byte (android_demo/core, tested from tests/test_android.py).

    python -m pipeline.golden --output android_demo/core/src/test/resources/golden   # synthetic set
    python -m pipeline.golden --images ../shared/data/photos --output /tmp/golden   # real photos

The synthetic set is committed; tests regenerate it and fail when it no longer matches, so a change
to the preprocessing cannot land without new vectors (and a Kotlin core that reproduces them).
"""

import io
import json

import numpy as np
from PIL import Image

from pipeline.device.runner import quantize_input
from pipeline.stages.preprocess import Preprocessing, to_rgb, normalize, pixels

# The app-facing input grids: the export's default (uint8, where q is the pixel itself), int8 and
# float32.
UINT8_INPUT = ("uint8", 1 / 127.5, 127)
INT8_INPUT = ("int8", 0.0078125, -1)
FLOAT_INPUT = ("float32", None, None)


def input_tensor_bytes(image, spec, input_grid):
    """The bytes an app writes into the input tensor for `image` (a PIL image)."""
    x = normalize(pixels(image, spec), spec)[None]
    dtype, scale, zero_point = input_grid
    if dtype == "float32":
        return np.ascontiguousarray(x, "<f4").tobytes()
    detail = {"dtype": np.dtype(dtype).type, "quantization": (np.float32(scale), zero_point)}
    return quantize_input(x, detail).tobytes()


def image_case(name, image, spec, input_grid):
    """{file name: bytes} of one preprocessing case."""
    orientation = int(image.getexif().get(0x0112, 1))
    decoded = to_rgb(image)
    dtype, scale, zero_point = input_grid
    meta = {
        "width": decoded.width, "height": decoded.height, "orientation": orientation,
        "mode": image.mode, "resolution": spec.resolution, "crop_fraction": spec.crop_fraction,
        "normalize_mean": spec.mean, "normalize_std": spec.std,
        "input_dtype": dtype,
        "input_scale": None if scale is None else float(np.float32(scale)),
        "input_zero_point": zero_point,
    }
    return {
        f"{name}.json": json.dumps(meta, indent=1) + "\n",
        f"{name}.rgb": np.asarray(decoded, np.uint8).tobytes(),
        f"{name}.input": input_tensor_bytes(image, spec, input_grid),
    }


def topk_case(name, output, dtype, scale, zero_point, meaning, k=3):
    """{file name: bytes} of one post-processing case: output bytes → top-k."""
    from pipeline.device.runner import dequantize_output
    from pipeline.stages.parity_metrics import log_softmax

    raw = np.asarray(output, dtype)
    detail = {"quantization": (0.0, 0) if scale is None else (np.float32(scale), zero_point)}
    values = dequantize_output(raw, detail)
    probabilities = np.exp(log_softmax(values)) if meaning == "logits" else values.astype(np.float64)
    order = sorted(range(len(values)), key=lambda i: (-probabilities[i], i))[:k]
    meta = {
        "output_dtype": dtype, "scale": None if scale is None else float(np.float32(scale)),
        "zero_point": zero_point, "meaning": meaning, "k": k,
        "labels": [f"class_{i}" for i in range(len(values))],
        "expected": [{"index": i, "score": float(probabilities[i])} for i in order],
    }
    data = np.ascontiguousarray(raw, "<f4").tobytes() if dtype == "float32" else raw.tobytes()
    return {f"{name}.json": json.dumps(meta, indent=1) + "\n", f"{name}.output": data}


def _reopened(image, fmt="PNG", **save_args):
    """Round-trips through a real file so EXIF and modes go through Pillow's decoders."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    buffer.seek(0)
    reopened = Image.open(buffer)
    reopened.load()
    return reopened


def synthetic_images():
    """Edge cases: odd sizes, portrait, grayscale, palette, alpha, 16-bit, every EXIF orientation."""
    rng = np.random.RandomState(7)
    yy, xx = np.mgrid[0:23, 0:37]
    gradient = np.stack([xx * 7 % 256, yy * 11 % 256, (xx + yy) * 5 % 256], -1).astype(np.uint8)
    cases = {
        "odd_landscape": Image.fromarray(gradient),
        "odd_portrait": Image.fromarray(rng.randint(0, 256, (41, 19, 3), dtype=np.uint8)),
        "grayscale": Image.fromarray(rng.randint(0, 256, (30, 30), dtype=np.uint8), "L"),
        "palette": Image.fromarray(gradient).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "rgba": Image.fromarray(rng.randint(0, 256, (17, 25, 4), dtype=np.uint8), "RGBA"),
        "gray16": Image.fromarray(rng.randint(0, 65536, (20, 28)).astype(np.uint16)),
        "tiny_upscale": Image.fromarray(rng.randint(0, 256, (5, 7, 3), dtype=np.uint8)),
    }
    images = {name: _reopened(image) for name, image in cases.items()}
    base = Image.fromarray(rng.randint(0, 256, (12, 20, 3), dtype=np.uint8))
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        images[f"exif_{orientation}"] = _reopened(base, exif=exif)
    return images


def synthetic_set():
    """The committed vectors: each edge case under the settings that exercise it."""
    settings = {
        "odd_landscape": (Preprocessing(resolution=32), UINT8_INPUT),
        "odd_portrait": (Preprocessing(resolution=24, crop_fraction=0.875), INT8_INPUT),
        "grayscale": (Preprocessing(resolution=48), UINT8_INPUT),
        "palette": (Preprocessing(resolution=16), UINT8_INPUT),
        "rgba": (Preprocessing(resolution=20), FLOAT_INPUT),
        "gray16": (Preprocessing(resolution=16), UINT8_INPUT),
        "tiny_upscale": (Preprocessing(resolution=224), UINT8_INPUT),
    }
    files = {}
    for name, image in synthetic_images().items():
        spec, grid = settings.get(name, (Preprocessing(resolution=16), UINT8_INPUT))
        files.update(image_case(name, image, spec, grid))
    rng = np.random.RandomState(3)
    files.update(topk_case("topk_uint8_logits", rng.randint(0, 256, 1000), "uint8", 0.1213, 87, "logits"))
    files.update(topk_case("topk_int8_logits", rng.randint(-128, 128, 10), "int8", 0.05, -3, "logits"))
    ties = np.array([3, 9, 9, 1, 9, 0], np.uint8)  # ties: the lower index wins
    files.update(topk_case("topk_ties", ties, "uint8", 0.25, 0, "logits"))
    files.update(topk_case("topk_float_scores", rng.uniform(0, 1, 7), "float32", None, None, "scores"))
    p = rng.uniform(0, 1, 9)
    files.update(topk_case("topk_probabilities", p / p.sum(), "float32", None, None, "probabilities"))
    return files


def image_folder_set(folder, spec=Preprocessing(), grid=UINT8_INPUT):
    """Vectors for real photos (not committed: they may not be redistributable). A photo Pillow
    cannot decode is refused in one line: a vector set missing it would pass unnoticed."""
    from pipeline.stages.calibrate import scan_images
    from pipeline.core.errors import PipelineInputError
    from pipeline.stages.preprocess import load_images

    found = scan_images(folder)
    if not found.files:
        raise PipelineInputError(f"no images (jpg, jpeg, png, bmp, webp) in --images {folder}: pass "
                                 "a folder of photos")
    try:
        # Decoded through the one preprocessing function first: it sorts what Pillow raises on
        # bad data (many classes) from the environment's errors.
        loaded = load_images(found.files, spec)
    except OSError as error:
        raise PipelineInputError(f"cannot read {error.filename}: {error.strerror}; fix its "
                                 "permissions or remove it") from None
    if loaded.skipped:
        path, reason = loaded.skipped[0]
        raise PipelineInputError(f"--images: {path} is {reason}: replace it with a valid photo or "
                                 "remove it")
    stems = {}
    for path in found.files:
        if path.stem in stems:
            # Vectors are named after the photo: one of the two would silently replace the other.
            raise PipelineInputError(f"--images: {stems[path.stem]} and {path} would both be vector "
                                     f"photo_{path.stem}: rename one of them")
        stems[path.stem] = path
    files = {}
    for path in found.files:
        with Image.open(path) as image:
            image.load()
            files.update(image_case(f"photo_{path.stem}", image, spec, grid))
    return files


def write(folder, files):
    """All the vectors or none: a folder of half old, half new vectors would mislead the app's
    tests."""
    from pipeline.core.artifacts import write_files_atomically

    write_files_atomically(folder, files)
