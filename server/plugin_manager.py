"""Plugin loading in one place, and the one typed wrapper the rest of the code calls hooks through.

Order: entry points of the group `hybridrec` (built-ins are registered there too, exactly as
an external package registers its own), then plugins passed in code (tests, embedding
applications), minus those named in the environment variable HYBRIDREC_DISABLE_PLUGINS
(comma-separated entry-point names), then `check_pending()`.
"""
from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Iterable

import pluggy

from . import hookspecs
from .errors import ConfigError
from .stages import STAGE_KINDS, Stage

DISABLE_ENV = "HYBRIDREC_DISABLE_PLUGINS"
BUILTIN_ENTRY_POINTS = ("candidates", "filters", "scorers", "rerankers")


class Plugins:
    """The loaded plugins and the stage registry they provide."""

    def __init__(self, extra: Iterable[object] = (), use_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        if use_entry_points:
            for ep in entry_points(group=hookspecs.PROJECT):
                if ep.name in disabled:
                    continue
                self.pm.register(ep.load(), name=ep.name)
            found = {ep.name for ep in entry_points(group=hookspecs.PROJECT)}
            if not found & set(BUILTIN_ENTRY_POINTS):
                raise ConfigError(
                    "no built-in hybridrec plugins found through entry points: install the package "
                    "(pip install -e .) rather than running it from a source tree"
                )
        for plugin in extra:
            self.pm.register(plugin)
        self.pm.check_pending()
        self.registry = self._collect()

    def _collect(self) -> dict[str, dict[str, type[Stage]]]:
        registry: dict[str, dict[str, type[Stage]]] = {kind: {} for kind in STAGE_KINDS}
        for result in self.pm.hook.hybridrec_register_stages():
            for cls in result or ():
                plugin_name = getattr(cls, "__module__", repr(cls))
                kind = getattr(cls, "kind", "")
                if kind not in registry or not isinstance(cls, type) or not issubclass(cls, Stage):
                    raise ConfigError(f"plugin {plugin_name!r}: {cls!r} is not a hybridrec stage class")
                if not cls.plugin_name:
                    raise ConfigError(f"plugin {plugin_name!r}: {cls.__name__} has no plugin_name")
                other = registry[kind].get(cls.plugin_name)
                if other is not None and other is not cls:
                    raise ConfigError(
                        f"plugin {plugin_name!r}: {kind} stage {cls.plugin_name!r} is already "
                        f"registered by {other.__module__}.{other.__name__}"
                    )
                registry[kind][cls.plugin_name] = cls
        return registry

    def stage_class(self, kind: str, name: str) -> type[Stage] | None:
        return self.registry.get(kind, {}).get(name)

    def choices(self, kind: str) -> list[str]:
        return sorted(self.registry.get(kind, {}))

    def pipelines_built(self, pipelines: dict[str, object]) -> None:
        self.pm.hook.hybridrec_pipelines_built(pipelines=pipelines)
