"""The hand-written TensorFlow recipe that `pipeline.export --quantize int8` is measured against.

What a user writes in about 40 lines to do the same work as the export: MobileNetV2 with ImageNet
weights, int8 conversion calibrated on N images, then the float model (Keras, batches of 64) and
the int8 `.tflite` (one image at a time, the Interpreter's defaults) on every evaluation image, and
top-1 agreement between them. It uses the same preprocessing as the export (Imagenette's images
are 224×224 already, so this is a plain decode + scale), and nothing from the pipeline.

    python benchmarks/plain_recipe.py --calibration DIR --eval DIR [--samples 300] [--out recipe.tflite]
"""

import argparse
import pathlib
import random
import time

START = time.perf_counter()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def images_in(folder):
    return sorted(p for p in pathlib.Path(folder).rglob("*") if p.suffix.lower() in EXTENSIONS)


def load(path, size=224):
    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(image, np.float32) / 127.5 - 1.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model = tf.keras.applications.MobileNetV2(weights="imagenet")
    calibration_files = images_in(args.calibration)
    random.Random(0).shuffle(calibration_files)
    calibration = [load(p) for p in calibration_files[: args.samples]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([a[None]] for a in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    int8_model = converter.convert()
    if args.out:
        pathlib.Path(args.out).write_bytes(int8_model)

    images = np.stack([load(p) for p in images_in(args.eval)])
    float_top1 = model.predict(images, batch_size=64, verbose=0).argmax(axis=1)

    interpreter = tf.lite.Interpreter(model_content=int8_model)
    interpreter.allocate_tensors()
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = given["quantization"]
    int8_top1 = []
    for image in images:
        q = np.clip(np.round(image / scale + zero), 0, 255).astype(np.uint8)
        interpreter.set_tensor(given["index"], q[None])
        interpreter.invoke()
        int8_top1.append(int(interpreter.get_tensor(taken["index"])[0].argmax()))
    agreement = float(np.mean(np.array(int8_top1) == float_top1))
    print(f"recipe: agreement {agreement:.2%} on {len(images)} images, "
          f"{time.perf_counter() - START:.1f} s")


if __name__ == "__main__":
    main()
