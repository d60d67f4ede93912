"""Task contracts and metrics."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from zoo.errors import ZooError
from zoo.tasks import TASK_NAMES, get_task
from zoo.tasks.metrics import best_accuracy_threshold, micro_average_precision


def test_every_task_has_a_contract_and_metrics():
    for name in TASK_NAMES:
        task = get_task(name)
        assert task.name == name and task.batch and task.prediction
        assert task.primary_metric
    with pytest.raises(ZooError, match="unknown task 'copy'"):
        get_task("copy")


def test_micro_ap_matches_sklearn_without_ties_and_is_pessimistic_with_them():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    positive = torch.tensor([1, 0, 1, 1, 0, 0])
    assert float(micro_average_precision(scores, positive)) == pytest.approx(
        average_precision_score(positive.numpy(), scores.numpy())
    )
    # one positive and one negative tied: the negative is ranked first
    assert float(micro_average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0]))) == pytest.approx(0.5)
    assert float(micro_average_precision(torch.tensor([0.5, 0.5]), torch.tensor([0, 1]))) == pytest.approx(0.5)
    # a constant score earns the worst ranking
    tied = micro_average_precision(torch.zeros(4), torch.tensor([1, 0, 0, 0]))
    assert float(tied) == pytest.approx(0.25)


def test_copy_detection_metrics():
    task = get_task("copy_detection")
    metrics = task.make_metrics()
    true = torch.tensor([0, 1, 2, 3, 4, 5, 5, 0])
    pred = torch.tensor([0.5, 1.0, 2.5, 3.0, 4.0, 4.5, 5.0, 1.0])
    task.update(metrics, {"level": pred[:4]}, {"level": true[:4]})
    task.update(metrics, {"level": pred[4:]}, {"level": true[4:]})
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["rd"] == pytest.approx((pred - true).abs().mean().item() / 5)
    assert values["pcc"] == pytest.approx(float(torch.corrcoef(torch.stack([pred, true.float()]))[0, 1]), abs=1e-5)
    copies = (true >= 3).numpy()
    assert values["auroc"] == pytest.approx(roc_auc_score(copies, pred.numpy()))
    assert values["muap"] == pytest.approx(average_precision_score(copies, pred.numpy()))


def test_binary_metrics_rank_consistently_across_batches():
    # batch 1 scores lie in [0, 1], batch 2 far outside: no per-batch squashing may reorder them
    task = get_task("fake_detection")
    metrics = task.make_metrics()
    scores = [torch.tensor([0.2, 0.9]), torch.tensor([-30.0, 40.0, 0.5])]
    labels = [torch.tensor([0, 1]), torch.tensor([0, 1, 1])]
    for s, y in zip(scores, labels, strict=True):
        task.update(metrics, {"score": s, "decision": (s >= 0.5).long()}, {"label": y})
    values = {k: float(v) for k, v in metrics.compute().items()}
    all_scores, all_labels = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    assert values["auroc"] == pytest.approx(roc_auc_score(all_labels, all_scores))
    assert values["ap"] == pytest.approx(average_precision_score(all_labels, all_scores))
    assert values["acc"] == pytest.approx(1.0)
    assert values["tpr_at_1fpr"] == pytest.approx(1.0)


def test_tpr_at_1_percent_fpr_counts_only_thresholds_below_it():
    task = get_task("attribution")
    metrics = task.make_metrics()
    # the highest-scoring sample is a negative: any threshold passing a positive passes it too (FPR 1/2)
    scores = torch.tensor([10.0, 5.0, 1.0, 0.0])
    task.update(metrics, {"score": scores, "decision": torch.zeros(4, dtype=torch.long)},
                {"label": torch.tensor([0, 1, 1, 0])})
    assert float(metrics.compute()["tpr_at_1fpr"]) == 0.0


def test_best_accuracy_threshold_separates_validation_scores():
    scores = torch.tensor([-2.0, -1.0, 0.5, 3.0, 4.0])
    labels = torch.tensor([0, 0, 0, 1, 1])
    threshold = best_accuracy_threshold(scores, labels)
    assert 0.5 < threshold < 3.0
    assert ((scores >= threshold).long() == labels).all()


def test_batch_contract_violations_are_clear():
    task = get_task("copy_detection")
    good = {"generated": torch.zeros(2, 3, 8, 8), "real": torch.zeros(2, 3, 8, 8),
            "level": torch.tensor([1, 2]), "id": ["a", "b"]}
    task.check_batch(good)
    with pytest.raises(ZooError, match="missing field 'real'"):
        task.check_batch({k: v for k, v in good.items() if k != "real"})
    with pytest.raises(ZooError, match="'level' must have dtype torch.int64"):
        task.check_batch({**good, "level": torch.tensor([1.0, 2.0])})
    with pytest.raises(ZooError, match="'generated' must have shape"):
        task.check_batch({**good, "generated": torch.zeros(2, 1, 8, 8)})
    with pytest.raises(ZooError, match="'id' holds 1 items but the batch holds 2"):
        task.check_batch({**good, "id": ["a"]})
    with pytest.raises(ZooError, match="MyMethod prediction: field 'pdf'"):
        task.check_prediction({"level": torch.zeros(2), "pdf": torch.zeros(2, 5)}, "MyMethod")
