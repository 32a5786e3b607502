"""pipeline.preprocess on real image files (Pillow-written PNG/TIFF/JPEG/BMP), no mocks.

Small images (64x48) and resolution 96 keep this fast; the identity test uses 224 on purpose.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from pipeline.stages.preprocess import (
    IMAGE_EXTENSIONS,
    Preprocessing,
    load_images,
    normalize,
    pixels,
    preprocess,
)

SPEC = Preprocessing(resolution=96)
W, H = 64, 48


def _solid(mode, colour, size=(W, H)):
    return Image.new(mode, size, colour)


def _save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def _assert_solid(array, rgb):
    """Every output pixel is exactly `rgb`."""
    assert array.shape == (SPEC.resolution, SPEC.resolution, 3)
    assert array.dtype == np.uint8
    values = np.unique(array.reshape(-1, 3), axis=0)
    assert values.tolist() == [list(rgb)], f"expected only {rgb}, got {values[:5].tolist()}"


# --- output tensor: shape, dtype, range, exact end points ------------------------------------


def test_output_shape_dtype_and_exact_endpoints(tmp_path):
    path = _save(_solid("RGB", (0, 255, 128)), tmp_path / "solid.png")
    x = preprocess(str(path), SPEC)
    assert x.shape == (96, 96, 3)
    assert x.dtype == np.float32
    low, high = SPEC.value_range()
    assert x.min() >= np.float32(low) and x.max() <= np.float32(high)
    # x = (p - 127) / 127.5 in float32, exactly as MediaPipe normalizes a float input.
    assert np.all(x[..., 0] == np.float32(-127) / np.float32(127.5))
    assert np.all(x[..., 1] == np.float32(128) / np.float32(127.5))
    assert np.all(x[..., 2] == np.float32(1) / np.float32(127.5))


def test_normalize_maps_full_uint8_range_onto_the_uint8_input_grid():
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    x = normalize(ramp, SPEC)
    assert x.dtype == np.float32
    assert (x.min(), x.max()) == tuple(np.float32(v) for v in SPEC.value_range())
    assert np.all(np.diff(x[..., 0].ravel()) > 0)  # strictly increasing: no clipping, no folding
    np.testing.assert_allclose(x[..., 0].ravel(), (np.arange(256) - 127) / 127.5, atol=1e-7)


def test_raw_bytes_are_exactly_the_quantized_input():
    """A client that writes the camera's bytes into the uint8 input (MediaPipe, the Task Library)
    gives the model exactly the tensor the pipeline calibrated and evaluated on: q = p for every
    pixel, on the grid the export produces (scale 1/127.5 as float32, zero point 127)."""
    from pipeline.device.runner import quantize_input

    ramp = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    grid = {"dtype": np.uint8, "quantization": (float(np.float32(1 / 127.5)), 127)}
    assert np.array_equal(quantize_input(normalize(ramp, SPEC), grid), ramp)
    # int8 input: the byte minus 128.
    grid = {"dtype": np.int8, "quantization": (float(np.float32(1 / 127.5)), -1)}
    assert np.array_equal(quantize_input(normalize(ramp, SPEC), grid).astype(np.int16),
                          ramp.astype(np.int16) - 128)


@pytest.mark.parametrize("resolution", [96, 160])
def test_resolution_sets_output_size(tmp_path, resolution):
    path = _save(_solid("RGB", (10, 20, 30), size=(50, 70)), tmp_path / "p.png")
    x = preprocess(path, Preprocessing(resolution=resolution))
    assert x.shape == (resolution, resolution, 3)


# --- image modes ------------------------------------------------------------------------------


def _palette_image():
    image = Image.new("P", (W, H), 0)
    palette = [0, 0, 0, 200, 30, 40, 10, 220, 90, 5, 6, 250] + [0] * (256 * 3 - 12)
    image.putpalette(palette)
    image.paste(1, (0, 0, W, H))  # every pixel is palette entry 1 = (200, 30, 40)
    return image


def _rgba_image():
    # Same colour everywhere, alpha from fully transparent to opaque: colour must survive.
    array = np.zeros((H, W, 4), np.uint8)
    array[..., :3] = (200, 10, 30)
    array[..., 3] = np.linspace(0, 255, W, dtype=np.uint8)[None, :]
    return Image.fromarray(array, mode="RGBA")


def _la_image():
    array = np.zeros((H, W, 2), np.uint8)
    array[..., 0] = 77
    array[..., 1] = np.linspace(0, 255, W, dtype=np.uint8)[None, :]
    return Image.fromarray(array, mode="LA")


def _i16_image(value):
    return Image.fromarray(np.full((H, W), value, dtype=np.uint16))


MODE_CASES = [
    # (id, image factory, file name, stored mode, expected RGB everywhere)
    ("L-png", lambda: _solid("L", 77), "grey.png", "L", (77, 77, 77)),
    ("P-png", _palette_image, "palette.png", "P", (200, 30, 40)),
    ("RGBA-png", _rgba_image, "rgba.png", "RGBA", (200, 10, 30)),
    ("LA-png", _la_image, "la.png", "LA", (77, 77, 77)),
    ("CMYK-tiff-red", lambda: _solid("CMYK", (0, 255, 255, 0)), "red.tif", "CMYK", (255, 0, 0)),
    ("CMYK-tiff-white", lambda: _solid("CMYK", (0, 0, 0, 0)), "white.tif", "CMYK", (255, 255, 255)),
    ("CMYK-tiff-black", lambda: _solid("CMYK", (0, 0, 0, 255)), "black.tif", "CMYK", (0, 0, 0)),
    ("I16-png-0x8000", lambda: _i16_image(0x8000), "i16.png", "I;16", (128, 128, 128)),
    ("I16-png-0xffff", lambda: _i16_image(0xFFFF), "i16max.png", "I;16", (255, 255, 255)),
    ("I16-png-0x01ff", lambda: _i16_image(0x01FF), "i16low.png", "I;16", (1, 1, 1)),
    ("I16-tiff-0x8000", lambda: _i16_image(0x8000), "i16.tif", "I;16", (128, 128, 128)),
]


@pytest.mark.parametrize(
    "factory, name, stored_mode, rgb", [c[1:] for c in MODE_CASES], ids=[c[0] for c in MODE_CASES]
)
def test_image_mode_is_converted_to_expected_rgb(tmp_path, factory, name, stored_mode, rgb):
    path = _save(factory(), tmp_path / name)
    with Image.open(path) as stored:  # the file really holds the mode under test
        assert stored.mode == stored_mode
    _assert_solid(pixels(str(path), SPEC), rgb)
    x = preprocess(path, SPEC)
    np.testing.assert_allclose(x[0, 0], (np.array(rgb) - 127) / 127.5, atol=1e-6)


def test_i16_keeps_high_byte_per_pixel(tmp_path):
    # Left half 0x8000 (-> 128), right half 0x12FF (-> 0x12 = 18): not clipped at 255, not low byte.
    array = np.full((96, 192), 0x8000, dtype=np.uint16)
    array[:, 96:] = 0x12FF
    path = _save(Image.fromarray(array), tmp_path / "halves16.png")
    out = pixels(path, Preprocessing(resolution=96, crop_fraction=1.0))
    # The center crop of a 192x96 image is columns 48..144: left half 128, right half 18.
    assert np.all(out[:, :40] == 128)
    assert np.all(out[:, 56:] == 18)


def test_grayscale_gradient_gives_r_equals_g_equals_b(tmp_path):
    gradient = np.tile(np.linspace(0, 255, W, dtype=np.uint8), (H, 1))
    gradient[::2] = 255 - gradient[::2]  # some vertical structure too
    grey = Image.fromarray(gradient, mode="L")
    expected = pixels(Image.fromarray(np.stack([gradient] * 3, axis=-1), mode="RGB"), SPEC)

    png = pixels(_save(grey, tmp_path / "grad.png"), SPEC)
    np.testing.assert_array_equal(png, expected)  # lossless file: exactly the grey replicated

    jpeg_path = _save(grey, tmp_path / "grad.jpg", quality=95)
    with Image.open(jpeg_path) as stored:
        assert stored.mode == "L"
    jpeg = pixels(jpeg_path, SPEC)
    assert np.array_equal(jpeg[..., 0], jpeg[..., 1]) and np.array_equal(jpeg[..., 1], jpeg[..., 2])
    assert np.abs(jpeg.astype(int) - expected.astype(int)).mean() < 8
    assert jpeg.min() < 60 and jpeg.max() > 195  # not flattened to a constant


def test_rgba_with_transparent_pixels_is_not_composited(tmp_path):
    # A fully transparent pixel keeps its stored colour (no black/white background composite).
    array = np.zeros((H, W, 4), np.uint8)
    array[..., :3] = (0, 128, 255)
    array[..., 3] = 0
    path = _save(Image.fromarray(array, mode="RGBA"), tmp_path / "clear.png")
    _assert_solid(pixels(path, SPEC), (0, 128, 255))


def test_cmyk_jpeg_decodes_to_expected_colour(tmp_path):
    path = _save(_solid("CMYK", (0, 255, 255, 0)), tmp_path / "red_cmyk.jpg", quality=95)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
    out = pixels(path, SPEC).reshape(-1, 3).astype(int)
    assert np.abs(out - [255, 0, 0]).max() <= 6


def test_palette_image_with_several_entries_matches_palette_lookup(tmp_path):
    image = _palette_image()
    indices = np.zeros((H, W), np.uint8)
    indices[:, 16:] = 2
    indices[:, 32:] = 3
    image.putdata(indices.ravel().tolist())
    path = _save(image, tmp_path / "pal3.png")
    palette = np.array(image.getpalette()[: 4 * 3], np.uint8).reshape(4, 3)
    expected_rgb = Image.fromarray(palette[indices], mode="RGB")
    np.testing.assert_array_equal(pixels(path, SPEC), pixels(expected_rgb, SPEC))


# --- EXIF orientation ---------------------------------------------------------------------------

RED, BLUE = (230, 20, 20), (20, 20, 230)


def _halves_image():
    """64x48 landscape: left half red, right half blue."""
    array = np.zeros((H, W, 3), np.uint8)
    array[:, : W // 2] = RED
    array[:, W // 2 :] = BLUE
    return Image.fromarray(array)


@pytest.mark.parametrize(
    "orientation, rot90_k, top, bottom",
    [(6, -1, RED, BLUE), (8, 1, BLUE, RED)],  # 6: rotate 90° clockwise to display; 8: counter-clockwise
)
def test_exif_orientation_is_applied(tmp_path, orientation, rot90_k, top, bottom):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"oriented{orientation}.jpg"
    _halves_image().save(path, quality=95, exif=exif)
    with Image.open(path) as stored:
        assert stored.getexif()[0x0112] == orientation
        assert stored.size == (W, H)
        raw = np.asarray(stored.convert("RGB"))  # decoded pixels, orientation not applied

    out = pixels(path, SPEC)
    # Lossless check: same as rotating the decoded pixels by hand and preprocessing them.
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(raw, k=rot90_k)))
    assert rotated.size == (H, W)
    np.testing.assert_array_equal(out, pixels(rotated, SPEC))
    # And the meaning: the displayed image is portrait, halves stacked vertically.
    quarter = SPEC.resolution // 4
    np.testing.assert_allclose(out[:quarter].reshape(-1, 3).mean(0), top, atol=12)
    np.testing.assert_allclose(out[-quarter:].reshape(-1, 3).mean(0), bottom, atol=12)
    # Ignoring the tag would give left/right halves instead: top rows would be half red, half blue.
    assert np.abs(out[:quarter, :quarter].reshape(-1, 3).mean(0) - top).max() < 12
    assert np.abs(out[:quarter, -quarter:].reshape(-1, 3).mean(0) - top).max() < 12


def test_exif_orientation_matches_manually_rotated_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = tmp_path / "tagged.jpg"
    _halves_image().save(tagged, quality=95, exif=exif)
    upright = tmp_path / "upright.jpg"
    _halves_image().transpose(Image.Transpose.ROTATE_270).save(upright, quality=95)
    a = preprocess(tagged, SPEC)
    b = preprocess(upright, SPEC)
    # Different JPEG encodings of the same picture: close, within JPEG tolerance.
    assert np.abs(a - b).mean() < 0.03
    assert np.abs(a - b).max() < 0.3


def test_exif_orientation_is_applied_to_pillow_images_too():
    exif = Image.Exif()
    exif[0x0112] = 6
    image = _halves_image()
    image.info["exif"] = exif.tobytes()
    out = pixels(image, SPEC)
    expected = pixels(_halves_image().transpose(Image.Transpose.ROTATE_270), SPEC)
    np.testing.assert_array_equal(out, expected)


# --- center crop geometry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, fraction, box",
    [
        ((640, 480), 1.0, (80, 0, 560, 480)),
        ((640, 480), 0.875, (110, 30, 530, 450)),
        ((480, 640), 1.0, (0, 80, 480, 560)),
        ((480, 640), 0.875, (30, 110, 450, 530)),
        ((224, 224), 1.0, (0, 0, 224, 224)),
        ((224, 224), 0.875, (14, 14, 210, 210)),
        ((101, 50), 1.0, (25, 0, 75, 50)),  # odd margin: floor division puts the extra column right
        ((64, 48), 0.875, (11, 3, 53, 45)),  # side = round(42.0) = 42
    ],
)
def test_crop_box(size, fraction, box):
    got = Preprocessing(resolution=96, crop_fraction=fraction).crop_box(*size)
    assert got == box
    left, top, right, bottom = got
    assert right - left == bottom - top  # square
    assert 0 <= left and 0 <= top and right <= size[0] and bottom <= size[1]


def test_crop_box_side_follows_formula():
    spec = Preprocessing(crop_fraction=0.875)
    for w, h in [(333, 500), (500, 333), (97, 97), (1, 1), (2, 9)]:
        side = max(1, round(min(w, h) * 0.875))
        assert spec.crop_box(w, h) == ((w - side) // 2, (h - side) // 2,
                                       (w - side) // 2 + side, (h - side) // 2 + side)


def test_identity_size_passes_through_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    path = _save(Image.fromarray(original), tmp_path / "noise224.png")
    out = pixels(path, Preprocessing(resolution=224, crop_fraction=1.0))
    np.testing.assert_array_equal(out, original)  # no resampling on identity
    x = preprocess(path, Preprocessing(resolution=224, crop_fraction=1.0))
    np.testing.assert_array_equal(x, (original.astype(np.float32) - 127) / np.float32(127.5))


@pytest.mark.parametrize("size", [(120, 90), (400, 300)])  # enlarging, and shrinking
def test_resize_is_pillow_bilinear(tmp_path, size):
    """Away from the crop border (where the crop-edge handling matters, tested below) the output
    is Pillow's bilinear resize of the center square, antialiased when shrinking."""
    rng = np.random.default_rng(5)
    original = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    path = _save(original, tmp_path / "noise.png")
    box = SPEC.crop_box(*size)
    reference = np.asarray(original.crop(box).resize((96, 96), Image.Resampling.BILINEAR))
    out = pixels(path, SPEC)
    np.testing.assert_array_equal(out[4:-4, 4:-4], reference[4:-4, 4:-4])
    if size[0] > 96:
        # Antialiased: a 1-pixel checkerboard shrunk ~3x averages to grey instead of aliasing.
        board = (np.indices((300, 400)).sum(0) % 2 * 255).astype(np.uint8)
        grey = pixels(Image.fromarray(board), SPEC)
        assert np.abs(grey.astype(int) - 128).max() <= 20


def _thirds_image(width=96, height=32):
    array = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    array[:, :third] = (255, 0, 0)
    array[:, third : 2 * third] = (0, 255, 0)
    array[:, 2 * third :] = (0, 0, 255)
    return array


def test_wide_image_is_cropped_not_squashed(tmp_path):
    # Squashing the whole 96x32 image into 96x96 would put red in the left third and blue in the
    # right third of the output; a center crop shows only the green centre (away from the edges).
    path = _save(Image.fromarray(_thirds_image()), tmp_path / "thirds.png")
    out = pixels(path, SPEC)
    interior = out[:, 2:-2].reshape(-1, 3)
    assert np.unique(interior, axis=0).tolist() == [[0, 255, 0]]


@pytest.mark.parametrize("size", [(96, 32), (300, 100)])
def test_center_crop_output_contains_only_centre_colour(tmp_path, size):
    """Every output pixel, edges included, comes from inside the crop: nothing bleeds in from the
    cut-off thirds (a crop, then a resize of that square)."""
    path = _save(Image.fromarray(_thirds_image(*size)), tmp_path / "thirds.png")
    out = pixels(path, SPEC)
    colours = np.unique(out.reshape(-1, 3), axis=0).tolist()
    assert colours == [[0, 255, 0]], (
        f"expected only the centre colour; edge columns are {out[0, 0].tolist()} / "
        f"{out[0, -1].tolist()} (pixels outside the crop box leak into the resize)"
    )


# --- determinism ------------------------------------------------------------------------------


def test_same_file_twice_is_byte_identical(tmp_path):
    rng = np.random.default_rng(2)
    path = _save(Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)), tmp_path / "n.jpg")
    a = preprocess(path, SPEC)
    b = preprocess(path, SPEC)
    assert a.tobytes() == b.tobytes()
    loaded = load_images([path, path], SPEC, workers=2)
    assert loaded.arrays[0].tobytes() == a.tobytes() == loaded.arrays[1].tobytes()


# --- load_images ------------------------------------------------------------------------------


def _noise_jpeg(path, seed, size=(W, H)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


def test_load_images_skips_undecodable_files_and_keeps_good_ones(tmp_path):
    good1 = _noise_jpeg(tmp_path / "good1.jpg", 1)
    good2 = _save(_solid("RGB", (1, 2, 3)), tmp_path / "good2.png")
    truncated = _noise_jpeg(tmp_path / "truncated.jpg", 3)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a JPEG\n")

    paths = [good1, truncated, not_image, good2]
    loaded = load_images(paths, SPEC)
    assert loaded.paths == [good1, good2]  # order kept
    assert loaded.arrays.shape == (2, 96, 96, 3) and loaded.arrays.dtype == np.float32
    np.testing.assert_array_equal(loaded.arrays[0], preprocess(good1, SPEC))
    np.testing.assert_array_equal(loaded.arrays[1], preprocess(good2, SPEC))
    reasons = dict(loaded.skipped)
    assert set(reasons) == {str(truncated), str(not_image)}
    assert "truncated" in reasons[str(truncated)]
    assert "not a decodable image" in reasons[str(not_image)]


def test_load_images_all_bad_gives_empty_array(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 100)
    loaded = load_images([bad], SPEC)
    assert loaded.paths == [] and loaded.arrays.shape == (0, 96, 96, 3)
    assert [p for p, _ in loaded.skipped] == [str(bad)]


def test_load_images_raises_for_dangling_symlink(tmp_path):
    good = _noise_jpeg(tmp_path / "good.jpg", 4)
    link = tmp_path / "x.jpg"
    os.symlink(tmp_path / "does_not_exist.jpg", link)
    with pytest.raises(FileNotFoundError):
        load_images([good, link], SPEC)


# --- model_config description -----------------------------------------------------------------


def test_to_config_describes_the_steps_and_is_json():
    spec = Preprocessing(resolution=160, crop_fraction=0.875)
    config = spec.to_config()
    round_tripped = json.loads(json.dumps(config))
    assert round_tripped == config
    assert config["crop"]["crop_fraction"] == 0.875
    assert config["resize"]["size"] == [160, 160]
    assert (config["normalize"]["mean"], config["normalize"]["std"]) == (127.0, 127.5)
    # The recorded mean/std reproduce the end points of the range they claim.
    mean, std = config["normalize"]["mean"], config["normalize"]["std"]
    assert (0 - mean) / std == pytest.approx(config["normalize"]["range"][0])
    assert (255 - mean) / std == pytest.approx(config["normalize"]["range"][1])
    assert Preprocessing(crop_fraction=1.0).to_config()["crop"]["crop_fraction"] == 1.0


# --- real photos from ../shared ---------------------------------------------------------------


def test_shared_photos_preprocess(shared_dir):
    photos = sorted(
        p for p in (shared_dir / "data" / "photos").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
    )
    assert {p.suffix.lower() for p in photos} >= {".bmp", ".jpg"}
    for path in photos:
        x = preprocess(path, SPEC)
        assert x.shape == (96, 96, 3), path
        assert x.dtype == np.float32, path
        assert -1.0 <= x.min() and x.max() <= 1.01, path
        assert x.std() > 0.05, f"{path} came out (nearly) constant"
    loaded = load_images(photos, SPEC)
    assert loaded.skipped == [] and loaded.arrays.shape == (len(photos), 96, 96, 3)
