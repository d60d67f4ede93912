"""Every registered method, found through the registry, runs end to end on its task's mini set.

Like a third party's plugin, a method is reached only through its entry point, its ``tiny`` variant and
its task: this test names no method.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fast_trainer

from zoo import registry
from zoo.module import ZooModule
from zoo.tasks import get_task

METHODS = registry.methods.names()


@pytest.mark.parametrize("name", METHODS)
def test_tiny_variant_runs_on_the_mini_suite(name, tmp_path):
    cls = registry.methods.load(name)
    assert "tiny" in cls.variants, f"{name} has no tiny variant"
    assert cls.paper, f"{name} names no paper"
    task = get_task(cls.task)
    torch.manual_seed(0)
    model = cls.from_variant("tiny")
    datamodule = registry.datamodules.load(task.mini_datamodule)()
    limits = dict(limit_train_batches=2, limit_val_batches=2, limit_test_batches=2, max_epochs=1)
    if cls.trains:
        fast_trainer(**limits).fit(model, datamodule)
    else:
        fast_trainer(**limits).validate(model, datamodule)
    results = fast_trainer(**limits).test(model, datamodule)[0]
    metric_names = ("pcc", "rd", "muap", "auroc") if not task.binary else ("acc", "auroc", "ap", "tpr_at_1fpr")
    for metric in metric_names:
        assert f"test/{metric}" in results, f"{name} did not report {metric}"
    assert math.isfinite(results["test/rd" if not task.binary else "test/acc"])
    # and it survives its own save / load
    model.save_pretrained(tmp_path / "export")
    assert type(ZooModule.from_pretrained(tmp_path / "export")) is cls
