"""Names that point outside the package: "package.module:attribute" for a user's own data set or model builder.

The module is imported by its dotted name, so it must be importable where the code runs (the working folder or
PYTHONPATH, on every Ray node for a cluster run).
"""

from __future__ import annotations

import importlib
from typing import Any

from distill.errors import ConfigError


def is_plugin(name: str) -> bool:
    """Whether `name` has the plug-in form "module:attribute" (not a registry name, not "torchvision:...")."""
    return ":" in name and not name.startswith("torchvision:")


def load_plugin(name: str, key: str) -> Any:
    """The attribute that "package.module:attribute" names; one-line ConfigErrors, naming config key `key`, for a
    malformed name, a module that does not import, or a missing attribute."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{key}={name!r}: a plug-in is named 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may fail in any way while importing
        raise ConfigError(f"{key}={name!r}: module {module_name} cannot be imported "
                          f"({type(error).__name__}: {error})") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"{key}={name!r}: module {module_name} has no {attribute}") from None
