"""Import specs and user files: the one rule for ``"package.module:attr"`` names and
``--import FILE.py``, shared by the model, dataset and task registries.

A spec names a Python object by the module that defines it and its attribute path
(``"my_models.resnet:build"``, ``"pkg.mod:Outer.factory"``). Resolving a spec imports the
module, which runs its code: a recipe that holds a spec runs that code. Modules are looked
up on ``sys.path`` and, failing that, in the current directory.

:func:`import_file` loads a ``.py`` file by path (once per file per process) so that its
``@register_model`` / ``@register_dataset`` / ``@register_task`` lines count. The file is
importable afterwards under its stem (``resnet.py`` -> module ``resnet``) unless a module of
that name is already loaded, so a spec may name it (``"resnet:build"``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import sysconfig
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["ImportSpecError", "user_code_error", "is_spec", "parse_spec", "resolve_spec",
           "import_file", "import_files", "spec_source", "file_sha256", "object_label",
           "is_object_label", "is_builtin", "duplicate_name"]

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_SPEC = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT}(?:\.{_IDENT})*)$")
_OBJECT_LABEL = re.compile(r"^<object [^<>]*>$")
_FILES: dict[Path, ModuleType] = {}  # resolved path -> module, so a file runs once


class ImportSpecError(ValueError):
    """A spec or a file that cannot be imported; the message says which and why."""


def is_spec(name: object) -> bool:
    """Whether ``name`` has the form of an import spec (``"package.module:attr"``)."""
    return isinstance(name, str) and _SPEC.match(name) is not None


def parse_spec(spec: str) -> tuple[str, str]:
    """``"pkg.mod:attr.path"`` -> ``("pkg.mod", "attr.path")``.

    Raises:
        ImportSpecError: ``spec`` is not of that form.
    """
    match = _SPEC.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ImportSpecError(f"{spec!r} is not an import spec; write it as "
                              "\"package.module:factory\"")
    return match.group(1), match.group(2)


def user_code_error(err: BaseException, what: str, *, users_only: bool = False
                    ) -> ImportSpecError:
    """An ImportSpecError for an exception raised by the user's code, naming ``what`` failed
    and the file and line of its innermost frame (``users_only``: only a frame of the
    user's own files, not one of torch's: no file named when the error is torch's own)."""
    # the innermost frame of the user's own files (not admmprune, torch or the standard
    # library: the user's line, not the call into it or the library call that raised),
    # else the innermost frame outside admmprune
    own = Path(__file__).resolve().parent
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not Path(f.filename).resolve().is_relative_to(own)]
    roots = _library_roots()
    users = [f for f in frames if not f.filename.startswith("<") and not any(
        Path(f.filename).resolve().is_relative_to(root) for root in roots)]
    frames = users if users or users_only else frames
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    if isinstance(err, SyntaxError) and err.filename:
        where = f" ({err.filename}, line {err.lineno})"
    return ImportSpecError(f"{what} failed{where}: {type(err).__name__}: {err}")


def _import_module(name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not (name == err.name or name.startswith(err.name + ".")):
            raise user_code_error(err, f"importing {name!r} for {spec!r}") from None
    # not on sys.path: the current directory, as `python -m` would have it
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            if not (name == err.name or name.startswith(f"{err.name}.")):
                raise user_code_error(err, f"importing {name!r} for {spec!r}") from None
        except Exception as err:  # noqa: BLE001 - the user's module failed: say where
            raise user_code_error(err, f"importing {name!r} for {spec!r}") from None
    raise ImportSpecError(f"{spec!r}: no module named {name!r} on the Python path or in the "
                          f"current directory; install it, run from its directory, or load "
                          "its file with --import FILE.py")


def resolve_spec(spec: str, what: str = "object") -> Any:
    """The object ``spec`` names: its module imported (running its code), then each
    attribute of the path looked up.

    Args:
        spec: ``"package.module:attr"``.
        what: what the object is for, in messages (``"model factory"``).

    Raises:
        ImportSpecError: malformed spec, module not found, module failed to import, or no
            such attribute.
    """
    module_name, attr_path = parse_spec(spec)
    try:
        module = _import_module(module_name, spec)
    except ImportSpecError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's module failed: say where
        raise user_code_error(err, f"importing {module_name!r} for {spec!r}") from None
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ImportSpecError(f"{what} {spec!r}: module {module_name!r} "
                                  f"({getattr(module, '__file__', '?')}) has no {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ImportSpecError(f"{what} {spec!r} is a {type(obj).__name__}, not something "
                              "that can be called")
    return obj


def import_file(path: str | Path) -> ModuleType:
    """Run the Python file ``path`` as a module (once per file in a process) and return it.

    Raises:
        ImportSpecError: the file does not exist, is not a ``.py`` file, or its code raised.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImportSpecError(f"--import {path}: no such file")
    if path.suffix != ".py":
        raise ImportSpecError(f"--import {path}: expected a Python file ending in .py")
    path = path.resolve()
    if path in _FILES:
        return _FILES[path]
    name = path.stem
    if not re.fullmatch(_IDENT, name) or name in sys.modules:
        # taken (or not a valid name): a private one, so nothing already loaded is replaced
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
        name = f"admmprune_import_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportSpecError(f"--import {path}: Python cannot load this file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file failed: say where
        del sys.modules[name]
        raise user_code_error(err, f"--import {path}") from None
    _FILES[path] = module
    return module


def import_files(paths) -> list[ModuleType]:
    """:func:`import_file` for each of ``paths``, in order."""
    return [import_file(p) for p in paths or ()]


def _library_roots() -> list[Path]:
    """Where installed packages and the standard library live, and admmprune itself:
    modules there are not the user's files."""
    roots = {Path(p).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")
             if (p := sysconfig.get_paths().get(key))}
    roots.add(Path(__file__).resolve().parent)
    return sorted(roots)


def spec_source(spec: str) -> Path | None:
    """The local file that defines ``spec``'s module (already imported), or None when the
    module is installed, part of the standard library or of admmprune."""
    module_name, _ = parse_spec(spec)
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return None
    if any(path.is_relative_to(root) for root in _library_roots()):
        return None
    return path


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    sha = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def is_builtin(obj: object) -> bool:
    """Whether ``obj`` (a factory or class) is defined by admmprune itself."""
    return (getattr(obj, "__module__", None) or "").startswith("admmprune.")


def duplicate_name(kind: str, name: str, existing: object) -> ValueError:
    """The error of registering a second ``kind`` (model, dataset, task) under ``name``.

    The registries load their built-ins before a user's registration, so a user's name that
    a built-in has taken fails here, in the user's file (an ``--import`` reports its line),
    and never later inside admmprune's own imports."""
    owner = "a built-in one of admmprune" if is_builtin(existing) else \
        f"first by {getattr(existing, '__module__', '?')}"
    return ValueError(f"{kind} {name!r} is registered twice ({owner}); register yours under "
                      "another name")


def object_label(obj: object) -> str:
    """The name a run records for an object handed to it from Python (``"<object
    ResNet>"``): never a registered name or a spec, so nothing tries to rebuild it."""
    return f"<object {type(obj).__name__}>"


def is_object_label(name: object) -> bool:
    return isinstance(name, str) and _OBJECT_LABEL.match(name) is not None
