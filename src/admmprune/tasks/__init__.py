"""Tasks: what the pipeline asks of a kind of problem (its loss, its metrics, how to evaluate).

``create_task(name)`` / ``list_tasks()``; a new task is one module plus one line in
:mod:`admmprune.tasks.registry`'s built-in list.
"""

from .registry import Task, create_task, format_metric, list_tasks, register_task

__all__ = ["Task", "create_task", "list_tasks", "register_task", "format_metric"]
