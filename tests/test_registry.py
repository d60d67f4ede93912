"""The entry-point registry: lazy discovery, clear errors, broken and duplicate plugins."""

from __future__ import annotations

import json
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


def test_zoo_list_imports_no_plugin_module_and_no_backend():
    """``zoo list`` prints every entry from the plugins' manifests: no plugin, torch or Lightning is imported."""
    # the entries as the subprocess sees them (a plugin installed during the session is not on its path)
    code = (
        "import json, sys; from zoo import registry; from zoo.cli import main; main(['list']);"
        "entries = [e.value for r in (registry.methods, registry.datamodules) for e in r.entries.values()];"
        "print('MODULES', json.dumps([entries, sorted(sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    listed, _, data = out.rpartition("MODULES ")
    entries, imported = json.loads(data)
    assert {"zoo_cgi_dm.lightning_model:CGIDM", "zoo.data.mini_datamodules:MiniCopyright"} <= set(entries)
    for value in entries:
        assert value.partition(":")[2] in listed
        assert value.partition(":")[0] not in imported, value
    plugins = {value.partition(":")[0].split(".")[0] for value in entries} - {"zoo"}
    assert not {m for m in imported if m.split(".")[0] in plugins}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "lightning", "diffusers", "open_clip", "timm")}


def test_every_shipped_manifest_agrees_with_its_classes():
    """A manifest cannot drift: each built-in entry is listed, and as its class says (python -m zoo.cli.manifest)."""
    for reg in (registry.methods, registry.datamodules):
        for name, entry in reg.entries.items():
            if entry.dist != "provenance-zoo":
                continue
            manifest = registry._manifest(entry.value.partition(":")[0])
            assert name in manifest.get(reg.group, {}), f"{name} is in no {registry.MANIFEST}"
            assert manifest[reg.group][name] == reg.summary(name, reg.load(name)), (
                f"{registry.MANIFEST} of {name} disagrees with its class: run python -m zoo.cli.manifest <package>")


def test_an_entry_no_manifest_describes_is_imported_and_a_stale_one_is_not_trusted(installed):
    package = installed / "listed_pkg"
    package.mkdir()
    _fake_distribution(
        installed, "listed_plugin", {"Listed": "listed_pkg.model:Listed", "Unlisted": "listed_pkg.model:Unlisted"},
        {"listed_pkg/__init__": "", "listed_pkg/model": """
            from zoo.module import ZooModule
            class Listed(ZooModule):
                \"\"\"Imported: the class's own line.\"\"\"
                task = "fake_detection"
            class Unlisted(ZooModule):
                \"\"\"Not in the manifest.\"\"\"
                task = "copyright"
                variants = {"tiny": {}}
        """},
    )
    fields = {"task": "attribution", "display_name": "", "paper": "p", "variants": ["v"], "doc": "From the manifest."}
    manifest = {"zoo.methods": {"Listed": {"class": "listed_pkg.model:Listed", **fields}}}
    (package / registry.MANIFEST).write_text(json.dumps(manifest))
    registry.methods.refresh()
    assert registry.methods.describe("Listed")["doc"] == "From the manifest."
    assert "listed_pkg.model" not in sys.modules  # read, not imported
    unlisted = registry.methods.describe("Unlisted")
    assert unlisted["doc"] == "Not in the manifest." and unlisted["variants"] == ["tiny"]
    # a manifest entry that names another class is not trusted
    manifest["zoo.methods"]["Listed"]["class"] = "listed_pkg.other:Listed"
    (package / registry.MANIFEST).write_text(json.dumps(manifest))
    registry.methods.refresh()
    assert registry.methods.describe("Listed")["doc"] == "Imported: the class's own line."
    sys.modules.pop("listed_pkg.model", None)
    sys.modules.pop("listed_pkg", None)
