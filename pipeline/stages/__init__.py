"""The pipeline's stages, each a plain function over small dataclasses; no flags."""
