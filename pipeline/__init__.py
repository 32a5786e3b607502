"""MobileNetV2 → int8 TFLite deployment pipeline.

    from pipeline import api            # the Python API (api.export, api.check, …)
    python -m pipeline.export …         # the commands, one per API function

Layers, each importing only those below it (tests/test_structure.py holds them to it):
    pipeline.commands   absl flags → settings → pipeline.api → printed lines and exit codes
    pipeline.api        the facade: one function per command, keyword arguments named like flags
    pipeline.stages     the stages (build, calibrate, convert, verify, …) and their compositions
                        (export, check, sweep): plain functions over small dataclasses, no flags
    pipeline.device     the one-file on-device runner and the SSH/adb targets
    pipeline.core       errors, options, readers, artifacts, cache, files, statistics
"""

import os

# TensorFlow reads these when it is first imported, by the API as by the commands: oneDNN's kernels
# would train --qat along another numeric path than the command line's (WORKSPACE_NOTES, issue 15),
# and TensorFlow's C++ notices bury the one line a user needs.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
