"""The package layout: the callbacks are ``lit_robust.callbacks`` (from the top-level ``callbacks/`` folder), so a
project with a ``callbacks`` package of its own imports both; no module is loaded under two names."""

import configparser
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setup_cfg_lists_every_package():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    listed = set(config["options"]["packages"].split())
    on_disk = {"lit_robust.callbacks"}
    for folder, _, files in os.walk(os.path.join(ROOT, "lit_robust")):
        if "__init__.py" in files:
            on_disk.add(os.path.relpath(folder, ROOT).replace(os.sep, "."))
    assert listed == on_disk
    assert config["options"]["package_dir"].split() == ["lit_robust.callbacks", "=", "callbacks"]


def test_a_project_with_its_own_callbacks_package(tmp_path):
    (tmp_path / "callbacks").mkdir()
    (tmp_path / "callbacks" / "__init__.py").write_text("MINE = True\n")
    script = textwrap.dedent(f"""
        import os, sys
        import callbacks
        assert callbacks.MINE
        from lit_robust.callbacks import WeightAveraging
        import lit_robust.callbacks.weight_averaging as module
        import lit_robust.cli
        from lit_robust.cli import MetricsFile
        import lit_robust.callbacks
        assert isinstance(WeightAveraging(), module.WeightAveraging)
        assert lit_robust.cli.MetricsFile is lit_robust.callbacks.MetricsFile
        library = os.path.join({ROOT!r}, "callbacks")
        names = sorted(name for name, m in sys.modules.items()
                       if os.path.dirname(os.path.abspath(getattr(m, "__file__", None) or "/")) == library)
        assert names and all(name.startswith("lit_robust.callbacks") for name in names), names
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
