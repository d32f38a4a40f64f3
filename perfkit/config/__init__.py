"""Config location and validation.

Hydra already rejects unknown group options (``model=nope``) and unknown keys (struct mode). What it
cannot know is what the ``_target_`` classes accept, so :func:`check_config` checks every instantiable
node against its target's signature (unknown keyword, wrong type, choices of a ``Literal``) and the
run-level shortcuts (``devices``, ``num_nodes``, ``accelerator``, ``strategy``) against what Lightning
supports, before anything is built. Every problem becomes one :class:`ConfigError` line that names
the key and what is allowed.
"""

from perfkit.config.compose import (
    compose_config,
    config_dir,
    fit_to_targets,
    instantiate_all,
    register_resolvers,
    task_overrides,
)
from perfkit.config.preflight import check_config, check_required, check_resolves
from perfkit.config.typed import build_typed, check_node, typed_node, typed_root
from perfkit.errors import ConfigError, error_line
from perfkit.run import check_output_dir_overrides, fresh_run_dir
from perfkit.schemas import register as register_schemas

__all__ = [
    "ConfigError",
    "build_typed",
    "check_config",
    "check_node",
    "check_output_dir_overrides",
    "check_required",
    "check_resolves",
    "compose_config",
    "config_dir",
    "error_line",
    "fit_to_targets",
    "fresh_run_dir",
    "instantiate_all",
    "task_overrides",
    "typed_node",
    "typed_root",
]

# every entry point imports this package before Hydra composes its config
register_resolvers()
register_schemas()
