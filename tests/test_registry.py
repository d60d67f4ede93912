"""The plugin registry: one entry point per plugin, manifests read without imports, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zoo import hub, registry
from zoo.errors import ZooError

ROOT = Path(__file__).resolve().parents[1]


def _plugin(root: Path, dist: str, package: str, manifest: dict | str, modules: dict[str, str] | None = None) -> Path:
    """A real installed distribution: dist-info with its one ``zoo.plugins`` line, and its package and manifest."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[zoo.plugins]\n{package} = {package}\n")
    folder = root / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / registry.MANIFEST).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    for name, source in (modules or {}).items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return folder / registry.MANIFEST


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A folder on sys.path to install fake distributions into; the registry sees them after refresh."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    monkeypatch.undo()
    for name in set(sys.modules) - before:
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]
    registry.methods.refresh()


def test_builtin_datamodules_and_tasks_are_listed_without_importing_them():
    names = registry.datamodules.names()
    assert {"DRepParquet", "PairFolder", "MiniCopyDetection", "MiniFakeDetection", "MiniCopyright"} <= set(names)
    entry = registry.datamodules.get("DRepParquet")
    assert entry.class_path == "zoo.data.copy_detection.DRepParquet"
    assert (entry.dist, entry.plugin) == ("provenance-zoo", "zoo")
    assert registry.datamodules.get("MiniAttribution").plugin == "zoo_inversion_attribution"
    assert registry.tasks.names() == ["attribution", "copy_detection", "copyright", "fake_detection"]
    assert registry.tasks.describe("copyright")["question"].startswith("was this image used to fine-tune")


def test_a_task_entry_is_a_task_instance_of_its_name(installed):
    from zoo.tasks.base import Task

    assert isinstance(registry.tasks.load("fake_detection"), Task)
    _plugin(installed, "task_plugin", "task_pkg", {"zoo.tasks": {
        "not_a_task": {"class": "task_pkg.tasks:NOT_A_TASK"}, "renamed": {"class": "task_pkg.tasks:TASK"}}},
        {"tasks": "from zoo.tasks.fake_detection import TASK\nNOT_A_TASK = object()\n"})
    registry.tasks.refresh()
    with pytest.raises(ZooError, match="'not_a_task'.* is not a Task instance"):
        registry.tasks.load("not_a_task")
    with pytest.raises(ZooError, match="registered as 'renamed' .* is named 'fake_detection'"):
        registry.tasks.load("renamed")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ZooError, match=r"unknown datamodule 'MiniCopyDetecton'.*did you mean MiniCopyDetection"):
        registry.datamodules.get("MiniCopyDetecton")


def test_broken_plugin_is_reported_by_name_and_others_keep_working(installed):
    _plugin(installed, "broken_plugin", "broken_pkg", {"zoo.methods": {"BrokenMethod": {"class": "broken_pkg.m:X"}}},
            {"m": "raise ImportError('needs a library that is not installed')"})
    registry.methods.refresh()
    loaded, failed = registry.methods.load_all()
    assert "needs a library that is not installed" in str(failed["BrokenMethod"])
    assert "broken_plugin" in str(failed["BrokenMethod"])
    assert "BrokenMethod" not in loaded and "PDFEmbedding" in loaded
    # the datamodules, and any other method, still load
    assert registry.datamodules.load("MiniFakeDetection").task == "fake_detection"


def test_a_manifest_that_does_not_parse_is_one_line_naming_the_file_and_others_keep_working(installed):
    path = _plugin(installed, "garbled_plugin", "garbled_pkg", '{"zoo.methods": {"Garbled": ')
    wrong = _plugin(installed, "odd_sections", "odd_sections_pkg", {"zoo.method": {}})
    registry.methods.refresh()
    broken = registry.broken_plugins()
    assert set(broken) == {"garbled_pkg", "odd_sections_pkg"}
    assert str(broken["garbled_pkg"]).startswith(f"{path}: not a readable JSON manifest")
    assert "\n" not in str(broken["garbled_pkg"])
    assert f"{wrong}: unknown section 'zoo.method'" in str(broken["odd_sections_pkg"])
    assert "PDFEmbedding" in registry.methods.names() and "MiniCopyright" in registry.datamodules.names()
    assert "pdf_embedding.exponential_drep" in registry.pretrained()
    with pytest.raises(ZooError, match=r"unknown method 'Garbled'.*plugin 'garbled_pkg' is broken: .*zoo_plugin.json"):
        registry.methods.get("Garbled")
    _, failed = registry.methods.load_all()
    assert "plugin garbled_pkg" in failed


def test_zoo_list_says_which_plugin_is_not_loaded_and_why(installed, capsys):
    from zoo.cli import main

    path = _plugin(installed, "garbled_plugin", "garbled_pkg", '{"zoo.methods": {"Garbled": ')
    registry.methods.refresh()
    assert main(["list"]) == 0  # the other plugins are listed
    out = " ".join(capsys.readouterr().out.split())  # rich wraps the long line
    assert f"plugin garbled_pkg is not loaded: {path}: not a readable JSON manifest" in out
    assert "PDFEmbedding" in out


def test_two_plugins_claiming_one_name_is_an_error_naming_both(installed):
    for dist in ("first_plugin", "second_plugin"):
        _plugin(installed, dist, f"{dist}_pkg", {"zoo.methods": {"SameName": {"class": f"{dist}_pkg.m:SameName"}}})
    registry.methods.refresh()
    with pytest.raises(ZooError, match="two plugins claim the method name 'SameName'") as err:
        registry.methods.names()
    assert all(name in str(err.value) for name in ("first_plugin_pkg", "second_plugin_pkg", "first_plugin",
                                                   "second_plugin"))


def test_two_plugins_declaring_one_checkpoint_is_an_error_naming_both(installed):
    entry = {"method": "PDFEmbedding", "repo_id": "org/name"}
    for dist in ("first_release", "second_release"):
        _plugin(installed, dist, f"{dist}_pkg", {"pretrained": {"pdf_embedding.exponential_drep": entry}})
    registry.methods.refresh()
    with pytest.raises(ZooError, match="two plugins declare the pretrained checkpoint") as err:
        registry.pretrained()
    assert "first_release_pkg" in str(err.value) and "second_release_pkg" in str(err.value)


def test_entry_must_be_a_zoo_module_named_like_its_class(installed):
    _plugin(
        installed, "odd_plugin", "odd_pkg",
        {"zoo.methods": {"NotAModule": {"class": "odd_pkg.m:NotAModule"}, "Alias": {"class": "odd_pkg.m:Real"}}},
        {"m": """
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


def test_the_first_releases_entry_point_groups_are_not_read_and_the_error_says_how_to_move(installed):
    info = installed / "old_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: old-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[zoo.methods]\nOldMethod = old_mod:OldMethod\n")
    registry.methods.refresh()
    assert "OldMethod" not in registry.methods.names()
    with pytest.raises(ZooError, match=r"old-plugin registers it in the entry-point group zoo.methods, which the zoo "
                                       r"no longer reads: list it in its package's zoo_plugin.json and register the "
                                       r"package in zoo.plugins"):
        registry.methods.load("OldMethod")


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


def test_every_shipped_manifest_agrees_with_its_classes_and_declared_checkpoints():
    """A manifest cannot drift: it is what its classes and ``PRETRAINED`` dicts say (python -m zoo.cli.manifest)."""
    shipped = [plugin for plugin in registry.plugins().values() if plugin.dist == "provenance-zoo"]
    assert {plugin.name for plugin in shipped} == {"zoo", *(p.name for p in (ROOT / "plugins").iterdir() if p.is_dir()
                                                             and p.name.startswith("zoo_"))}
    for plugin in shipped:
        assert registry.manifest(plugin) == registry.build_manifest(plugin.package), (
            f"{plugin.manifest_path} disagrees with its classes: run python -m zoo.cli.manifest {plugin.package}")
    # every released checkpoint is declared by the plugin of its method, and the Hub knows it by that name
    known = hub.known_checkpoints()
    assert {"pdf_embedding.exponential_drep", "universal_fake_detect.vitl14_progan", "sscd.disc_mixup"} <= set(known)
    for name, (entry, manifest) in registry.pretrained().items():
        assert registry.methods.get(entry["method"]).plugin == manifest.parent.name, name
        assert known[name].method == entry["method"]


def test_a_minimal_manifest_is_completed_from_the_class_and_its_fields_are_read_without_import(installed):
    _plugin(
        installed, "listed_plugin", "listed_pkg",
        {"zoo.methods": {"Listed": {"class": "listed_pkg.model:Listed", "task": "attribution", "display_name": "",
                                    "paper": "p", "variants": ["v"], "doc": "From the manifest."},
                         "Minimal": {"class": "listed_pkg.model:Minimal"}}},
        {"model": """
            from zoo.module import ZooModule
            class Listed(ZooModule):
                \"\"\"Imported: the class's own line.\"\"\"
                task = "fake_detection"
            class Minimal(ZooModule):
                \"\"\"Only its class in the manifest.\"\"\"
                task = "copyright"
                paper = "A Paper (Venue 2025)"
                variants = {"tiny": {}}
        """},
    )
    registry.methods.refresh()
    assert registry.methods.describe("Listed")["doc"] == "From the manifest."
    assert "listed_pkg.model" not in sys.modules  # read, not imported
    minimal = registry.methods.describe("Minimal")
    assert minimal == {"class": "listed_pkg.model:Minimal", "task": "copyright", "display_name": "",
                       "paper": "A Paper (Venue 2025)", "variants": ["tiny"], "doc": "Only its class in the manifest."}
    # the writer completes the minimal entry from the class
    assert registry.build_manifest("listed_pkg")["zoo.methods"]["Minimal"] == minimal


def test_a_plugins_released_checkpoint_is_known_by_name_and_checked_as_data(installed, monkeypatch):
    monkeypatch.delenv(hub.REGISTRY_ENV, raising=False)
    entry = {"method": "PDFEmbedding", "repo_id": "org/pdf-released", "revision": "main"}
    _plugin(installed, "release_plugin", "release_pkg", {"pretrained": {"pdf_embedding.org_release": entry}})
    path = _plugin(installed, "bad_release", "bad_release_pkg", {"pretrained": {"../escape": entry}})
    registry.methods.refresh()
    with pytest.raises(ZooError, match=rf"{path}: entry '../escape': a name is letters"):
        hub.known_checkpoints()
    (installed / "bad_release_pkg" / registry.MANIFEST).write_text("{}")
    registry.methods.refresh()
    assert hub.known_checkpoints()["pdf_embedding.org_release"].repo_id == "org/pdf-released"
