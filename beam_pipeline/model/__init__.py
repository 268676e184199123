"""Models: loading every form users have (``loading``): whole-model files, and weights-only files
with the user's code that builds the model (``builder``, ``weights``); and the Keras 2 -> 3
translation table (``legacy``). Finding the target layer and building the truncated sub-model live in
``beam_pipeline.recurrent``."""

from beam_pipeline.model.loading import FORMATS, LoadedModel, Provenance, load_model
from beam_pipeline.recurrent import ModelError

__all__ = ["FORMATS", "LoadedModel", "ModelError", "Provenance", "load_model"]
