"""Every Lightning hook that a module or a callback of the library overrides says so with ``@override``."""

import importlib
import inspect
import pkgutil

import pytest
from pytorch_lightning import Callback, LightningModule

import lit_robust.callbacks
import lit_robust.modules


def overridden_hooks(package, base):
    """(class, hook, function) of every method a class of ``package`` defines that ``base`` has too."""
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == module.__name__ and issubclass(cls, base):
                found += [(cls.__name__, name, function) for name, function in vars(cls).items()
                          if inspect.isfunction(function) and not name.startswith("__") and hasattr(base, name)]
    return found


@pytest.mark.parametrize("package, base", [(lit_robust.modules, LightningModule), (lit_robust.callbacks, Callback)],
                         ids=["modules", "callbacks"])
def test_every_overridden_hook_is_marked(package, base):
    hooks = overridden_hooks(package, base)
    assert len(hooks) > 10
    unmarked = [f"{cls}.{name}" for cls, name, function in hooks if not getattr(function, "__override__", False)]
    assert not unmarked, "hooks without @override: " + ", ".join(unmarked)
