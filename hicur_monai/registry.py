"""Named component stores shared by the library and the bundle configs.

Each store is a :class:`monai.utils.ComponentStore`. Modules register their components at
import time; :func:`create` builds a component from a store by name, so a bundle config
can say either ``{"_target_": "hicur_monai.networks.hcmae.HCMAE", ...}`` or
``{"_target_": "hicur_monai.registry.create", "store": "networks", "name": "hcmae", ...}``.

Example:
    >>> from hicur_monai.registry import NETWORKS
    >>> @NETWORKS("toy", "a toy network")
    ... class Toy: ...
    >>> "toy" in NETWORKS
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from monai.utils import ComponentStore

__all__ = [
    "Registry",
    "NETWORKS",
    "LLM_BACKENDS",
    "TEACHERS",
    "JUDGES",
    "TEXT_ENCODERS",
    "STORES",
    "create",
    "get",
    "names",
]

class Registry(ComponentStore):
    """A :class:`monai.utils.ComponentStore` that is also its own decorator.

    ``@STORE("name", "description")`` registers the decorated class or function, the same as
    ``STORE.add_def("name", "description")``.
    """

    def __call__(self, name: str, desc: str = "") -> Callable[[Any], Any]:
        return self.add_def(name, desc)


NETWORKS = Registry("networks", "Network architectures (HCMAE, VLM, fusion segmentation, prognosis).")
LLM_BACKENDS = Registry("llm_backends", "Causal LLM / chat-model backends (local folder, GGUF, HTTP, tiny random).")
TEACHERS = Registry("teachers", "Instruction-data teachers that write Q&A from a report or caption.")
JUDGES = Registry("judges", "Answer judges that score a model answer against a reference.")
TEXT_ENCODERS = Registry("text_encoders", "Text encoders that turn text into a sequence of hidden states.")

STORES: dict[str, Registry] = {
    "networks": NETWORKS,
    "llm_backends": LLM_BACKENDS,
    "teachers": TEACHERS,
    "judges": JUDGES,
    "text_encoders": TEXT_ENCODERS,
}

# Modules whose import registers components. Imported lazily on first lookup so that
# importing the registry stays cheap and optional extras are only needed when used.
_PROVIDERS: dict[str, tuple[str, ...]] = {
    "networks": ("hicur_monai.networks",),
    "llm_backends": ("hicur_monai.llm", "hicur_monai.llm.causal_lm"),
    "teachers": ("hicur_monai.llm",),
    "judges": ("hicur_monai.evaluation",),
    "text_encoders": ("hicur_monai.llm", "hicur_monai.networks", "hicur_monai.vlm"),
}


def _store(store: str) -> Registry:
    try:
        return STORES[store]
    except KeyError:
        raise KeyError(f"unknown registry {store!r}; known: {sorted(STORES)}") from None


def _load_providers(store: str) -> None:
    for module in _PROVIDERS.get(store, ()):
        try:
            importlib.import_module(module)
        except ImportError as err:  # an optional extra may be missing; say so only if the lookup fails
            _load_errors[module] = err


_load_errors: dict[str, ImportError] = {}


def get(store: str, name: str) -> Any:
    """Return the component registered as ``name`` in ``store`` (a class or a factory).

    Raises:
        KeyError: naming the store, the missing name and the names that exist.
    """
    comp = _store(store)
    if name not in comp:
        _load_providers(store)
    if name not in comp:
        hint = "".join(f"\n  (could not import {m}: {e})" for m, e in _load_errors.items())
        raise KeyError(f"no component {name!r} in registry {store!r}; known: {sorted(comp.names)}{hint}")
    return getattr(comp, name)


def names(store: str) -> list[str]:
    """Names registered in ``store`` (after importing the modules that provide them)."""
    _load_providers(store)
    return sorted(_store(store).names)


def create(store: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Build the component ``name`` of ``store`` with the given arguments (for bundle configs)."""
    return get(store, name)(*args, **kwargs)
