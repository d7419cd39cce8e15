from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hemaseg.data.contract import make_target
from hemaseg.engine import DivergedError, evaluate, train_one_epoch


class Oracle(nn.Module):
    """Answers with given masks: lets evaluate() be checked against hand-computed scores."""

    def __init__(self, answers):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.answers = answers
        self.roi_heads = SimpleNamespace(score_thresh=0.05)  # what predict() adjusts on a Mask R-CNN

    def forward(self, images, targets=None):
        if self.training:
            return {"loss_a": self.w * float("nan")}
        return [self.answers.pop(0) for _ in images]


def _answer(masks):
    m = torch.as_tensor(masks, dtype=torch.float32)[:, None]
    n = m.shape[0]
    return {"boxes": torch.zeros(n, 4), "labels": torch.ones(n, dtype=torch.int64),
            "scores": torch.ones(n), "masks": m}


def test_evaluate_by_hand():
    truth = np.zeros((2, 10, 10), np.uint8)
    truth[0, :4, :4] = 1
    truth[1, 6:, 6:] = 1
    perfect = truth.copy()
    half = np.zeros((1, 10, 10), np.uint8)
    half[0, :4, :2] = 1  # half of cell 0, cell 1 missed
    image = torch.zeros(3, 10, 10)
    loader = [([image, image], [make_target(truth), make_target(truth)])]
    scores = evaluate(Oracle([_answer(perfect), _answer(half)]), loader)
    assert scores["mean_iou"] == pytest.approx((1 + 8 / 32) / 2)
    assert scores["f1_50"] == pytest.approx(2 * 3 / (4 + 3))  # tp 2 + 1 (IoU 0.5 counts), fn 1
    assert scores["images"] == 2


def test_non_finite_loss_stops_before_the_step():
    model = Oracle([])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [([torch.zeros(3, 4, 4)], [make_target(np.ones((1, 4, 4)))])]
    with pytest.raises(DivergedError, match="lower the learning rate"):
        train_one_epoch(model, opt, loader, torch.device("cpu"), progress=False)
    assert torch.isfinite(model.w).all()


def test_evaluate_leaves_nucleus_instances_out_of_the_cell_scores():
    truth = np.zeros((1, 10, 10), np.uint8)
    truth[0, :6, :6] = 1
    true_nucleus = np.zeros_like(truth)
    true_nucleus[0, 2:4, 2:4] = 1
    pred = np.concatenate([truth, np.zeros_like(truth), np.zeros_like(truth)])
    pred[2, 1:3, 2:4] = 1  # a nucleus instance (4 px) sharing 2 px with the true one (4 px); the other is empty
    answer = _answer(pred)
    answer["labels"] = torch.tensor([1, 2, 2])
    loader = [([torch.zeros(3, 10, 10)], [make_target(truth, nuclei=true_nucleus)])]
    scores = evaluate(Oracle([answer]), loader, nucleus_label=2)
    assert scores["mean_iou"] == 1.0 and scores["f1_50"] == 1.0
    assert scores["nucleus_dice"] == pytest.approx(2 * 2 / (4 + 4))
    answer["labels"] = torch.tensor([1, 2, 2])
    plain = evaluate(Oracle([dict(answer)]), loader)  # without nucleus_label the nucleus counts as a cell
    assert plain["f1_50"] < 1.0 and "nucleus_dice" not in plain
