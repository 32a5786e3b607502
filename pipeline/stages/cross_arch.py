"""Cross-architecture parity: the same int8 model here and on a device (an ARM board, a Jetson, the
emulated aarch64 userland in CI), over the same input tensors, compared output by output.

    python -m pipeline.verify --tflite M --target ssh://user@board --eval DIR --eval-samples 50
"""

from pipeline.core.errors import PipelineInputError
from pipeline.device import remote
from pipeline.stages import calibrate
from pipeline.stages.preprocess import Preprocessing, load_images

FLOAT_ULPS_ALLOWED = 64


def cross_arch_parity(target, model_path, paths, spec, max_lsb=None):
    """Runs the model on `target` and here over the same input tensors; compares raw outputs.

    Both sides use XNNPACK at 1 thread. Differences are in units of the output's last place: the
    quantization step of an integer output, the float32 ulp of a float one. `max_lsb` defaults to
    0 for integer outputs (int8 kernels agree bit for bit) and FLOAT_ULPS_ALLOWED for float32.
    Returns {"images", "identical", "max_lsb", ...}."""
    import numpy as np

    from pipeline.device.runner import Runner, load_runtime, quantize_input

    _, _, module = load_runtime()
    host = Runner(module, model_path=str(model_path), threads=1)
    loaded = load_images(paths, spec)
    if not loaded.paths:
        raise PipelineInputError("none of the parity images could be decoded")
    inputs = np.stack([quantize_input(x[None], host.input)[0] for x in loaded.arrays])
    host_outputs = np.stack([host.raw(x[None])[0] for x in inputs])
    device_outputs, report = remote.remote_outputs(target, model_path, inputs)
    if device_outputs.shape != host_outputs.shape:
        raise PipelineInputError(f"the device returned outputs of shape {device_outputs.shape}, "
                                 f"expected {host_outputs.shape}")
    if np.issubdtype(host_outputs.dtype, np.integer):
        difference = np.abs(device_outputs.astype(np.int64) - host_outputs.astype(np.int64))
        allowed = 0 if max_lsb is None else max_lsb
    else:
        ulp = np.spacing(np.abs(host_outputs).astype(np.float32)).astype(np.float64)
        difference = np.abs(device_outputs.astype(np.float64) - host_outputs.astype(np.float64)) / ulp
        allowed = FLOAT_ULPS_ALLOWED if max_lsb is None else max_lsb
    per_image = difference.reshape(len(inputs), -1).max(axis=1)
    identical = int(np.sum(per_image == 0))
    result = {
        "target": str(target),
        "images": int(len(inputs)),
        "identical": identical,
        "max_lsb": float(difference.max()),
        "output_dtype": str(host_outputs.dtype),
        "top1_agreement": float(np.mean(host_outputs.argmax(-1) == device_outputs.argmax(-1))),
        "device": report["device"],
        "device_runtime": report["runtime"],
        "device_delegation": report["parity"]["delegation"],
        "max_lsb_allowed": allowed,
    }
    result["passed"] = result["max_lsb"] <= allowed and result["top1_agreement"] == 1.0
    return result


def cross_arch_parity_on_folder(target, model_path, directory, samples=50, seed=0, max_lsb=None):
    """`cross_arch_parity` of the model on `samples` images of `directory` (stratified, by seed)."""
    from pipeline.device.runner import Runner, load_runtime

    if not isinstance(target, remote.SshTarget):
        raise PipelineInputError("cross-architecture parity runs over ssh:// targets")
    folder = calibrate.scan_images(directory)
    if not folder.files:
        raise PipelineInputError(f"no images in {directory}")
    paths = calibrate.sample_files(folder, samples, seed)[0]
    _, _, module = load_runtime()
    resolution = int(Runner(module, model_path=model_path).input["shape"][1])
    return cross_arch_parity(target, model_path, sorted(paths), Preprocessing(resolution=resolution),
                             max_lsb)
