"""Runs every reader of a `.tflite` over the case files in a folder, in a child process.

    python tests/flatbuffer_cases.py CASES_DIR RESULTS_FILE [FIRST_CASE]
    python tests/flatbuffer_cases.py --crash RESULTS_FILE     # segfaults, to test the harness

Native code (LiteRT, flatbuffers' GenText) reading a damaged flatbuffer can take the process down,
so tests/test_properties.py runs the readers here and reads RESULTS_FILE back: one JSON line
{"case", "reader", "start": true} before each reader runs (flushed, so the line naming the input
survives a segfault), then {"case", "reader", "outcome": "ok" | "typed" | "unexpected", "detail"}.
CASES_DIR holds the cases (*.tflite) and the config and labels that go with the model
(model_config.json, labels.txt), for deploy.check_files.
"""

import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _readers(path, data, cases):
    from pipeline.core import tflite
    from pipeline.stages import deploy, inspection as inspect, metadata, predict

    files = {"model.tflite": data, "labels.txt": (cases / "labels.txt").read_bytes(),
             "model_config.json": (cases / "model_config.json").read_bytes()}
    return [
        ("tflite.read_model", lambda: tflite.read_model(path)),
        ("inspect.contract", lambda: inspect.contract(data, where=str(path))),
        ("metadata.read_metadata", lambda: metadata.read_metadata(data, str(path))),
        ("tflite.read_ops", lambda: tflite.read_ops(data, str(path))),
        ("tflite.output_kind", lambda: tflite.output_kind(data)),
        ("predict.load_classifier", lambda: predict.load_classifier(path)),
        ("deploy.check_files", lambda: deploy.check_files(files, cases)),
    ]


def main(cases, results, first=None):
    from pipeline.core.errors import PipelineInputError

    paths = sorted(cases.glob("*.tflite"))
    if first is not None:
        paths = [p for p in paths if p.name >= first]
    with open(results, "a", encoding="utf-8") as out:
        def record(**entry):
            out.write(json.dumps(entry) + "\n")
            out.flush()
            os.fsync(out.fileno())

        for path in paths:
            data = path.read_bytes()
            for name, read in _readers(path, data, cases):
                record(case=path.name, reader=name, start=True)
                try:
                    read()
                    record(case=path.name, reader=name, outcome="ok", detail="")
                except PipelineInputError as error:
                    record(case=path.name, reader=name, outcome="typed", detail=str(error))
                except Exception as error:  # noqa: BLE001 — the property: anything else is a bug
                    record(case=path.name, reader=name, outcome="unexpected",
                           detail="".join(traceback.format_exception(error))[-2000:])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if sys.argv[1] == "--crash":
        import ctypes

        with open(sys.argv[2], "a", encoding="utf-8") as out:
            out.write(json.dumps({"case": "crash.tflite", "reader": "ctypes", "start": True}) + "\n")
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
