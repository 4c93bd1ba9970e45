"""Models slimline can compress: the named zoo and user ``torch.export`` programs."""

from slimline.models.program import (
    export_program,
    is_graph_module,
    load_program,
    set_graph_training,
)
from slimline.models.zoo import (
    ZooEntry,
    build_model,
    get_entry,
    load_zoo_model,
    make_config,
    save_zoo_weights,
    zoo_names,
)

__all__ = [
    "ZooEntry",
    "build_model",
    "export_program",
    "get_entry",
    "is_graph_module",
    "load_program",
    "load_zoo_model",
    "make_config",
    "save_zoo_weights",
    "set_graph_training",
    "zoo_names",
]
