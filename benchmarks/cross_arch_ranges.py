"""Calibrated ranges and int8 models made on another instruction set from the same float model:
raw (as the kernels leave them) and snapped to pipeline.ranges' grid, as digests to compare.

TensorFlow's aarch64 build calibrates with NEON kernels, whose float sums round differently from
the x86 build's AVX ones. Run it here and on an (emulated) ARM machine and compare the lines: the
raw digests differ, the snapped ones should not (WORKSPACE_NOTES, issue 25).

    # on x86: the float model and the calibration arrays both sides start from
    python benchmarks/cross_arch_ranges.py --prepare DIR --model MODEL.keras --calibration IMAGES
    python benchmarks/cross_arch_ranges.py DIR
    # in the aarch64 userland of .ci/arm64_userland.sh, with TensorFlow's aarch64 wheel and Pillow
    # pip-installed into ROOT/opt/tf (pip install --target … --platform manylinux_2_27_aarch64),
    # this repository's pipeline/ in ROOT/opt/src and DIR copied to ROOT/opt/dir:
    PYTHONPATH=/opt/tf:/opt/src:/opt/site chroot ROOT qemu-aarch64-static -cpu cortex-a76 \\
        /usr/bin/python3 /opt/src/cross_arch_ranges.py /opt/dir
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prepare(folder, model_path, images):
    import numpy as np

    from pipeline.stages import build, calibrate, convert
    from pipeline.stages.preprocess import Preprocessing

    built = build.build_model(build.BuildConfig(model_path=model_path))
    spec = Preprocessing(built.resolution)
    drawn = calibrate.representative_dataset(
        calibrate.CalibrationConfig(directory=images, samples=8), spec)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "float.tflite").write_bytes(convert.float_tflite(built))
    np.save(folder / "arrays.npy", np.ascontiguousarray(drawn.arrays, np.float32))


def digests(folder):
    """{variant: sha256 prefix} of the calibrated ranges and the int8 model, min/max and
    percentile, raw and snapped."""
    import numpy as np

    from pipeline.stages import convert, ranges

    float_model = (folder / "float.tflite").read_bytes()
    arrays = np.load(folder / "arrays.npy")
    found = {}
    for snapped in (True, False):
        if not snapped:  # the same steps with the grid taken out
            convert.snap_model_ranges = ranges.snap_model_ranges = lambda model: None
        calibrated = convert.calibrate_model(None, arrays, float_model=float_model)
        clipped = ranges.clip_ranges(calibrated, arrays, 99.99)
        for mode, model in (("minmax", calibrated), ("percentile", clipped)):
            tag = f"{mode} {'snapped' if snapped else 'raw'}"
            seen = sorted(ranges.calibrated_ranges(model).items())
            found[f"{tag} ranges"] = hashlib.sha256(json.dumps(seen).encode()).hexdigest()[:16]
            int8 = convert.quantize_calibrated(model, convert.ConvertConfig("int8"))
            found[f"{tag} int8 model"] = hashlib.sha256(int8).hexdigest()[:16]
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--prepare", action="store_true")
    parser.add_argument("--model")
    parser.add_argument("--calibration")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.folder, args.model, args.calibration)
    else:
        for name, digest in digests(args.folder).items():
            print(f"{name}: {digest}")
