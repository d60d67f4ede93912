"""The entry-point registry: lazy discovery, clear errors, broken and duplicate plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zoo import registry
from zoo.errors import ZooError


def _fake_distribution(root: Path, dist: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """A real installed distribution: dist-info metadata with entry points, and its modules."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[zoo.methods]\n{lines}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install fake distributions into a folder on sys.path; the registry sees them after refresh."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    registry.methods.refresh()


def test_builtin_datamodules_are_listed_without_importing_them():
    names = registry.datamodules.names()
    assert {"DRepParquet", "PairFolder", "MiniCopyDetection", "MiniFakeDetection", "MiniCopyright"} <= set(names)
    entry = registry.datamodules.get("DRepParquet")
    assert entry.class_path == "zoo.data.copy_detection.DRepParquet"
    assert entry.dist == "provenance-zoo"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ZooError, match=r"unknown datamodule 'MiniCopyDetecton'.*did you mean MiniCopyDetection"):
        registry.datamodules.get("MiniCopyDetecton")


def test_broken_plugin_is_reported_by_name_and_others_keep_working(installed):
    _fake_distribution(
        installed, "broken_plugin", {"BrokenMethod": "broken_mod:BrokenMethod"},
        {"broken_mod": "raise ImportError('needs a library that is not installed')"},
    )
    registry.methods.refresh()
    loaded, failed = registry.methods.load_all()
    assert "BrokenMethod" in failed
    assert "needs a library that is not installed" in str(failed["BrokenMethod"])
    assert "broken_plugin" in str(failed["BrokenMethod"])
    assert "BrokenMethod" not in loaded
    # the datamodules, and any other method, still load
    assert registry.datamodules.load("MiniFakeDetection").task == "fake_detection"


def test_two_plugins_claiming_one_name_is_an_error_naming_both(installed):
    for dist in ("first_plugin", "second_plugin"):
        _fake_distribution(installed, dist, {"SameName": f"{dist}_mod:SameName"}, {})
    registry.methods.refresh()
    with pytest.raises(ZooError) as err:
        registry.methods.names()
    assert "first_plugin" in str(err.value) and "second_plugin" in str(err.value)


def test_entry_must_be_a_zoo_module_named_like_its_class(installed):
    _fake_distribution(
        installed, "odd_plugin", {"NotAModule": "odd_mod:NotAModule", "Alias": "odd_mod:Real"},
        {"odd_mod": """
            from zoo.module import ZooModule
            class NotAModule:
                pass
            class Real(ZooModule):
                task = "fake_detection"
        """},
    )
    registry.methods.refresh()
    with pytest.raises(ZooError, match="not a subclass of ZooModule"):
        registry.methods.load("NotAModule")
    with pytest.raises(ZooError, match="must equal the class name"):
        registry.methods.load("Alias")


def test_zoo_list_imports_no_heavy_backend():
    code = (
        "import sys; from zoo.cli import main; main(['list']);"
        "heavy = [m for m in ('diffusers', 'open_clip') if m in sys.modules];"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MiniCopyDetection" in out
    assert "HEAVY []" in out
