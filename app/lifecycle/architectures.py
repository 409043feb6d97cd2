"""Which checkpoints bertserve can export and serve: what optimum-onnx's own task registry exports for text
classification, with graph inputs the engine feeds. No hand-kept list to fall behind optimum."""

from __future__ import annotations

from app.engine import FED_INPUTS
from app.lifecycle import LifecycleError

TASK = "text-classification"


class UnsupportedArchitecture(LifecycleError):
    """A model type bertserve cannot export: a usage error (exit status 2), not a failed run."""

    exit_status = 2


def exportable(task: str = TASK) -> list[str]:
    """The model types optimum-onnx exports for `task` (text classification), from its registry."""
    import optimum.exporters.onnx.model_configs  # noqa: F401 - registers the ONNX configs with the TasksManager
    from optimum.exporters.tasks import TasksManager

    return sorted(TasksManager.get_supported_model_type_for_task(task, exporter="onnx"))


def check_architecture(config, source: str, task: str = TASK) -> None:
    """One line naming what can be exported when optimum cannot export this model type for text classification,
    or would give its graph inputs the server does not feed (layoutlm's bbox, for one)."""
    from optimum.exporters.tasks import TasksManager

    types = exportable(task)
    if config.model_type not in types:
        raise UnsupportedArchitecture(
            f"{source}: optimum-onnx cannot export architecture {config.model_type!r} for {task}; "
            f"it can export: {', '.join(types)}"
        )
    constructor = TasksManager.get_exporter_config_constructor(
        "onnx", task=task, model_type=config.model_type, library_name="transformers"
    )
    extra = sorted(set(constructor(config, task=task).inputs) - set(FED_INPUTS))
    if extra:
        raise UnsupportedArchitecture(
            f"{source}: optimum-onnx exports {config.model_type!r} with inputs {extra} that bertserve does not "
            f"feed (it feeds {', '.join(FED_INPUTS)})"
        )
