"""Every encoding, one module each, registered by name (``features/encodings/base.py`` says
how to add one). Importing this package imports every module in it, so a new module's
``@register_encoding`` is all it takes to be found."""
import importlib
import pkgutil

from features.encodings.base import (ENCODINGS, STATISTICS, Encoding, Fitted, encoding_class, encoding_of,
                                     register_encoding)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ENCODINGS", "STATISTICS", "Encoding", "Fitted", "encoding_class", "encoding_of", "register_encoding"]
