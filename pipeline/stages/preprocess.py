"""The one preprocessing function: image file → the float tensor MobileNetV2 was trained on.

Calibration, evaluation, reports and golden vectors for apps all call `preprocess`; nothing else in
the project turns pixels into model input. Feeding a model differently from how it was calibrated is
the classic silent failure of int8 deployment (the model then answers one class for everything), so
the exact steps are also written into `model_config.json` (`Preprocessing.to_config`) for apps.

Steps, in order:
  1. decode with Pillow; apply the EXIF orientation tag;
  2. convert to 8-bit RGB: palette and grayscale expand to RGB, alpha is discarded (colour values
     kept as stored; premultiplied RGBa and La are unpremultiplied first, as Pillow converts RGBa),
     CMYK uses Pillow's conversion, 16-bit and 32-bit integer samples keep their high byte
     (value >> 8, clipped to 0..255), 32-bit float samples are clipped to 0..255 (NaN is 0);
  3. center crop: the largest centered square, scaled by `crop_fraction` (1.0 keeps the whole
     shorter side, the framing a camera preview shows; 0.875 is the Inception-style eval crop);
     side = round(min(w, h) * crop_fraction), left = (w - side) // 2, top = (h - side) // 2;
  4. resize that square to resolution × resolution with Pillow's bilinear filter (antialiased when
     shrinking: the kernel support widens with the scale factor);
  5. normalize: x = (pixel − 127) / 127.5, in float32. That is MobileNetV2's [-1, 1]
     (`keras.applications.mobilenet_v2`: pixel / 127.5 − 1) moved up by half a uint8 step, so that
     the uint8 input grid (scale 1/127.5, zero point 127) holds every x exactly: a camera's raw RGB
     bytes *are* the quantized input (q = pixel), with no rounding tie for an app to get wrong. It
     is also the NormalizationOptions formula MediaPipe and the Task Library apply to float inputs
     (mean 127, std 127.5), so they compute the same float32 values bit for bit. The half-step
     costs the float model nothing measurable (top-1 on Imagenette val: see WORKSPACE_NOTES).
"""

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.core.options import option
from pipeline.core.errors import PipelineInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    resolution: int = 224
    crop_fraction: float = 1.0
    resample: str = "bilinear"
    # x = (pixel - mean) / std: MobileNetV2's [-1, 1], half a uint8 step up (see step 5).
    mean: float = 127.0
    std: float = 127.5

    def crop_box(self, width, height):
        side = max(1, int(round(min(width, height) * self.crop_fraction)))
        left = (width - side) // 2
        top = (height - side) // 2
        return (left, top, left + side, top + side)

    def value_range(self):
        """(x of pixel 0, x of pixel 255): the model input's calibrated range."""
        return ((0 - self.mean) / self.std, (255 - self.mean) / self.std)

    def to_config(self):
        """The steps, precisely enough for an app to reproduce them (model_config.json)."""
        return {
            "decoder": "Pillow",
            "exif_orientation": "applied (ImageOps.exif_transpose) before anything else",
            "color": "RGB, 8 bits a channel; alpha discarded; grayscale replicated to R=G=B; "
            "16-bit samples keep their high byte",
            "crop": {
                "kind": "center_square",
                "crop_fraction": self.crop_fraction,
                "formula": "side = round(min(w, h) * crop_fraction); left = (w - side) // 2; "
                "top = (h - side) // 2",
            },
            "resize": {
                "size": [self.resolution, self.resolution],
                "filter": self.resample,
                "library": "Pillow Image.crop(box).resize(size, BILINEAR) (antialiased when shrinking)",
            },
            "normalize": {
                "formula": "x = (pixel - mean) / std, in float32",
                "mean": self.mean,
                "std": self.std,
                "range": list(self.value_range()),
            },
            "layout": "NHWC, RGB channel order",
        }


class ImageDecodeError(PipelineInputError, ValueError):
    """An image file Pillow cannot turn into pixels: the file's fault (not an image, truncated,
    corrupt, too large to decode safely). `reason` says which, as `load_images` lists it.

    A ValueError too, so that callers which skip bad images by catching ValueError keep doing so."""

    def __init__(self, path, reason):
        super().__init__(f"cannot preprocess {path}: {reason}: pass a JPEG, PNG, BMP or WebP image")
        self.path, self.reason = str(path), reason


def to_rgb(image):
    """8-bit RGB of a decoded image: alpha dropped (not composited), 16-bit keeping the high byte."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's own I;16 → RGB conversion clips at 255 instead of scaling; keep the high byte.
        # int64, so that a negative 32-bit sample shifts to a negative value (clipped to 0) rather
        # than wrapping round to a large one.
        samples = np.asarray(image).astype(np.int64) >> 8
        image = Image.fromarray(np.clip(samples, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        # NaN has no pixel value (casting it is undefined and warns): 0, like Pillow's F → L.
        samples = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255, neginf=0)
        image = Image.fromarray(np.clip(samples, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "La":
        image = image.convert("LA")  # Pillow converts La to nothing but LA
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _check_pixel_count(image):
    """Refuses an image over Pillow's decompression-bomb limit before decoding it.

    Image.open only *warns* (DecompressionBombWarning) between 1x and 2x the limit, and decodes
    whatever it was told; the pixels are checked here so a 20,000² header is "too large" whatever the
    warnings filter, instead of gigabytes allocated on the pool's threads."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise Image.DecompressionBombError(
            f"{image.width}×{image.height} = {image.width * image.height:,} pixels, over Pillow's "
            f"limit of {limit:,}")


def load_rgb(path):
    """Decodes one image file into an 8-bit RGB Pillow image, EXIF orientation applied.

    Raises ImageDecodeError (a PipelineInputError) for a file that is not a decodable image: not an
    image, truncated, corrupt, too large. The environment's errors (missing file, no permission, a
    folder) stay OSError: the caller decides whether they end the run.
    """
    try:
        with Image.open(path) as image:
            _check_pixel_count(image)
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except Exception as error:  # noqa: BLE001 — Pillow's decoders raise many classes on bad data
        reason = image_error(error)
        if reason is None:
            raise
        raise ImageDecodeError(path, reason) from None


def pixels(image, spec, box=None, mirror=False):
    """Steps 1–4: an image (path or Pillow image) → uint8 array (resolution, resolution, 3).

    `box` and `mirror` exist for training augmentation (pipeline.train): another crop box than the
    centered square, and a left-right flip after resizing. Everything else (decode, colour, filter,
    normalization) stays the one transform that deployment uses.
    """
    if not isinstance(image, Image.Image):
        image = load_rgb(image)
    else:
        image = to_rgb(ImageOps.exif_transpose(image))
    # Crop, then resize the cropped image alone: resize(box=...) would let the filter read pixels
    # beyond the box into the edge rows, which an app that crops then resizes cannot reproduce.
    cropped = image.crop(box or spec.crop_box(*image.size))
    resized = cropped.resize((spec.resolution, spec.resolution), resample=Image.Resampling.BILINEAR)
    if mirror:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(resized, dtype=np.uint8)


def normalize(pixel_array, spec):
    """Step 5: uint8 pixels → float32 model input, (p − mean) / std as clients compute it."""
    return (pixel_array.astype(np.float32) - np.float32(spec.mean)) / np.float32(spec.std)


def preprocess(image, spec, box=None, mirror=False):
    """The whole transform: an image file (or Pillow image) → float32 (resolution, resolution, 3)."""
    return normalize(pixels(image, spec, box, mirror), spec)


@dataclasses.dataclass
class LoadedImages:
    paths: list
    arrays: np.ndarray  # float32 (n, resolution, resolution, 3)
    skipped: list  # [(path, reason)] of files that are not decodable images


def image_error(error):
    """Why Pillow could not turn a file into pixels, as a reason to print, or None when the error
    is the environment's (permissions, a dangling link) rather than the file's.

    Pillow raises many classes for bad data (UnidentifiedImageError, SyntaxError, ValueError,
    DecompressionBombError for a 30,000² PNG, struct.error, EOFError…); all are the file's fault.
    An OSError that names a file comes from the operating system (no such file, no permission, a
    folder, a symlink loop): the environment's."""
    if isinstance(error, OSError) and (
            isinstance(error, (PermissionError, FileNotFoundError, IsADirectoryError))
            or error.filename is not None):
        return None
    if isinstance(error, ImageDecodeError):
        return error.reason
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too large to decode safely ({error})"
    if isinstance(error, (UnidentifiedImageError, SyntaxError, ValueError)):
        return f"not a decodable image ({error})"
    if isinstance(error, OSError):
        return f"corrupt or truncated image ({error})"
    return f"not a decodable image ({type(error).__name__}: {error})"


def _try_preprocess(path, spec, box=None, mirror=False):
    try:
        return preprocess(path, spec, box, mirror), None
    except ImageDecodeError as error:
        return None, error.reason


def load_images(paths, spec, progress=None, workers=None):
    """Preprocesses many files on a thread pool (Pillow decodes without holding the GIL).

    Undecodable files are skipped and listed in `skipped` with the reason; unreadable ones (missing,
    no permission, a folder) raise OSError.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    arrays, good, skipped = [], [], []
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: _try_preprocess(p, spec), paths)
        if progress is not None:
            results = progress(results, total=len(paths))
        for path, (array, reason) in zip(paths, results):
            if array is None:
                skipped.append((str(path), reason))
            else:
                arrays.append(array)
                good.append(path)
    shape = (0, spec.resolution, spec.resolution, 3)
    stacked = np.stack(arrays) if arrays else np.zeros(shape, np.float32)
    return LoadedImages(paths=good, arrays=stacked, skipped=skipped)


OPTIONS = (
    option("float", "crop-fraction", 1.0,
           "Center-crop this fraction of the shorter side before resizing (1.0 = whole square)."),
)


def spec_from_settings(settings, resolution):
    """The Preprocessing of a model of `resolution` with --crop-fraction, checked."""
    crop = settings["crop-fraction"]
    if not 0 < crop <= 1:  # also refuses NaN
        raise PipelineInputError(f"--crop-fraction {crop} must be in (0, 1], e.g. 1.0 or 0.875")
    return Preprocessing(resolution=resolution, crop_fraction=crop)
