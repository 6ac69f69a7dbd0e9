"""Select the Keras 2 API (tf-keras) before TensorFlow is first imported.

tensorflow-recommenders 0.7.x refuses Keras 3, so every entry path (CLI, tests,
notebooks, a user's ``import models``) must set ``TF_USE_LEGACY_KERAS=1`` before
``import tensorflow``. Each top-level package imports this module first.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
