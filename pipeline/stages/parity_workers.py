"""Where evaluation runs: a pool of spawned single-threaded interpreter processes, or this one."""

import dataclasses
import os

import numpy as np

from pipeline.core.errors import PipelineInputError
from pipeline.stages.parity_metrics import as_logits
from pipeline.stages.preprocess import load_images


# Evaluation runs in worker processes, one interpreter thread each: two single-threaded
# interpreters side by side beat one two-threaded one (measured on the 2-core VM at 224: float
# 7.9 → 4.3 ms/img with 2 threads, int8 4.4 → 3.0), and the float half can start while the parent
# calibrates. XNNPACK's outputs do not depend on its thread count or on which process runs them
# (tests/test_cache.py checks against a 2-thread run). Small sets run in-process: starting a
# worker costs more than it saves.
CHUNK_IMAGES = 128
MIN_IMAGES_FOR_WORKERS = 2 * CHUNK_IMAGES


@dataclasses.dataclass
class ModelOutputs:
    """A model's outputs (as logits) on the decodable images of an evaluation set, in order."""
    paths: list
    logits: np.ndarray  # float64 (n, classes)
    skipped: list  # [(path, reason)] of files that are not decodable images


_RUNNERS = {}  # in a worker process: model file → Runner, kept between chunks


def _runner(model_path):
    from pipeline.device.runner import Runner, load_runtime

    if model_path not in _RUNNERS:
        with open(model_path, "rb") as f:
            _RUNNERS[model_path] = Runner(load_runtime()[2], model_content=f.read(), threads=1)
    return _RUNNERS[model_path]


def _warm_up():
    from pipeline.device.runner import load_runtime

    load_runtime()


def _outputs_on(model_path, output_kind, paths, spec, runner=None):
    """One chunk: decode `paths`, run the model. An unreadable file comes back as its OSError's
    (filename, strerror), to be raised in the parent as one line."""
    try:
        loaded = load_images(paths, spec, workers=1)
    except OSError as error:
        return None, (error.filename, error.strerror)
    if not len(loaded.paths):
        return ModelOutputs([], np.zeros((0, 0)), loaded.skipped), None
    logits = as_logits((runner or _runner(model_path))(loaded.arrays), output_kind)
    return ModelOutputs(list(loaded.paths), logits, loaded.skipped), None


class ParityWorkers:
    """Where evaluation chunks run: `workers` spawned processes, or this one (workers ≤ 1).

    Models are handed over as files in a private temporary folder, once, not pickled per chunk."""

    def __init__(self, workers=None):
        self.workers = workers or os.cpu_count() or 1
        self._pool = None
        self._folder = None
        self._files = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def _model_file(self, model_bytes):
        import hashlib
        import tempfile

        digest = hashlib.sha256(model_bytes).hexdigest()
        if digest not in self._files:
            if self._folder is None:
                self._folder = tempfile.TemporaryDirectory(prefix="parity-")
            path = os.path.join(self._folder.name, digest + ".tflite")
            with open(path, "wb") as f:
                f.write(model_bytes)
            self._files[digest] = path
        return self._files[digest]

    def start(self, images):
        """Starts the worker processes (they import the runtime meanwhile) if `images` are worth
        them; returns whether they run."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self.workers <= 1 or images < MIN_IMAGES_FOR_WORKERS:
            return False
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("spawn"))
            for _ in range(self.workers):
                self._pool.submit(_warm_up)
        return True

    def submit(self, model_bytes, paths, spec, progress=None):
        """Starts running the model on `paths`; returns a function that waits for the outputs."""
        from pipeline.core.tflite import output_kind

        from pipeline.device.runner import Runner, load_runtime

        kind = output_kind(model_bytes)
        chunks = [paths[i : i + CHUNK_IMAGES] for i in range(0, len(paths), CHUNK_IMAGES)]
        in_process = not self.start(len(paths))
        if in_process:
            runner = Runner(load_runtime()[2], model_content=model_bytes, threads=1)
            jobs = chunks  # run as they are collected, in order
        else:
            model_path = self._model_file(model_bytes)
            jobs = [self._pool.submit(_outputs_on, model_path, kind, chunk, spec) for chunk in chunks]

        def collect():
            parts = []
            for job in jobs:
                result, error = (_outputs_on(None, kind, job, spec, runner) if in_process
                                 else job.result())
                if error is not None:
                    filename, strerror = error
                    raise PipelineInputError(f"cannot read {filename}: {strerror}; fix its "
                                             "permissions or remove it")
                parts.append(result)
                if progress is not None:
                    progress(len(result.paths) + len(result.skipped))
            kept = [p for part in parts for p in part.paths]
            logits = [part.logits for part in parts if len(part.paths)]
            return ModelOutputs(kept, np.concatenate(logits) if logits else np.zeros((0, 0)),
                                [s for part in parts for s in part.skipped])

        return collect
