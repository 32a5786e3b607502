"""MobileNetV2 → int8 TFLite deployment pipeline.

One module per stage, each a plain function over small dataclasses, each runnable alone:
build → calibrate → convert → verify → benchmark → report; `pipeline.export` composes them.
"""

__version__ = "0.1.0"
