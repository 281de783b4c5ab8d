"""Every hook hybridrec calls, in one place. Plugins implement them with `hookimpl`.

A plugin is a module (or object) registered under the entry-point group `hybridrec`::

    [project.entry-points.hybridrec]
    my_stages = "my_package.stages"
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .stages import Stage

PROJECT = "hybridrec"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def hybridrec_register_stages() -> list[type[Stage]]:
    """Return the pipeline stage classes this plugin provides.

    Called once when the plugin manager starts, before any config is read. Each class
    subclasses one of `CandidateSource`, `Filter`, `Scorer` or `Reranker` from
    `hybridrec.server.stages`, and sets `plugin_name` (the name YAML configs use) and a
    `Params` dataclass (its validated parameters). Results from all plugins are
    collected; two classes of the same kind may not share a `plugin_name`.
    """


@hookspec
def hybridrec_pipelines_built(pipelines: dict[str, object]) -> None:
    """Called once after every pipeline of a config was built and validated, before the
    server listens. `pipelines` maps pipeline name to `hybridrec.server.pipeline.Pipeline`.
    A plugin may inspect them and raise `hybridrec.server.errors.ConfigError` to refuse a
    combination it cannot serve. Return value ignored.
    """
