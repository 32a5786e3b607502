"""The `--backend litert-quantizer` path: Google's LiteRT Quantizer (ai-edge-quantizer's successor)
on the float .tflite, with its packaged recipes (data, not code) and absolute min/max calibration."""

import contextlib
import io
import os

RECIPES = {"int8": "default_a8w8_recipe.json", "int16x8": "default_a16w8_recipe.json"}
ALGORITHMS = {"min-max": "min_max_uniform_quantize", "mse": "MSE", "octav": "OCTAV"}


def recipe(cfg):
    """The LiteRT Quantizer recipe (data, not code): the package's own, with the algorithm set."""
    import json
    import os

    import litert_quantizer

    path = os.path.join(os.path.dirname(litert_quantizer.__file__), "recipes",
                        RECIPES[cfg.quantize])
    with open(path) as f:
        recipe = json.load(f)
    for rule in recipe:
        rule["algorithm_key"] = ALGORITHMS[cfg.algorithm]
    return recipe


def quantize(float_tflite, calibration_arrays, cfg):
    """Quantizes a float .tflite with Google's LiteRT Quantizer (no TensorFlow needed).

    Calibration keeps the absolute min/max over all samples (`qsv_utils.min_max_update`). The
    Quantizer's own `calibrate` keeps a moving average of per-sample ranges instead: on MobileNetV2
    it clips logits at 9.0 of a true 17.9 and its result depends on sample order.
    """
    import numpy as np
    from litert_quantizer import calibrator, quantizer
    from litert_quantizer.utils import qsv_utils

    from pipeline.device.runner import load_runtime, quiet_native_stderr

    _, _, module = load_runtime()
    signatures = module.Interpreter(model_content=float_tflite).get_signature_list()
    key = next(iter(signatures))
    input_name = signatures[key]["inputs"][0]
    data = {key: [{input_name: np.asarray(a, np.float32)[None]} for a in calibration_arrays]}
    quant = quantizer.Quantizer(float_tflite)
    quant.load_quantization_recipe(recipe(cfg))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            quiet_native_stderr():
        calib = calibrator.Calibrator(float_tflite, num_threads=os.cpu_count() or 1,
                                      qsv_update_func=qsv_utils.min_max_update)
        calib.calibrate(data, quant._recipe_manager)
        result = quant.quantize(calib.get_model_qsvs(), enable_progress_report=False)
    return bytes(result.quantized_model)
