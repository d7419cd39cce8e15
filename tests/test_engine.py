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


class _Recorder(nn.Module):
    """A linear model whose loss records the dtype its forward pass computed in."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.dtypes = []

    def forward(self, images, targets=None):
        y = self.lin(torch.stack([im.flatten()[:4] for im in images]))
        self.dtypes.append(y.dtype)
        return {"loss_a": (y.float() - 10).pow(2).mean()}  # far from any output: never a zero gradient in bfloat16


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_train_one_epoch_runs_the_forward_pass_in_the_asked_precision(autocast):
    torch.manual_seed(0)  # the same start whatever ran before
    model = _Recorder()
    before = model.lin.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = ([torch.rand(3, 4, 4)], [make_target(np.zeros((0, 4, 4), np.uint8), [])])
    train_one_epoch(model, opt, [batch], torch.device("cpu"), autocast=autocast, progress=False)
    assert model.dtypes == [autocast or torch.float32]
    assert model.lin.weight.dtype == torch.float32 and not torch.equal(model.lin.weight, before)  # float32 master weights, updated


def test_training_precision_by_device_and_cpu(monkeypatch):
    import hemaseg.engine as engine

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine.training_precision(cuda, amp=True) == torch.float16
    assert engine.training_precision(cuda, amp=False) is None
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert engine.training_precision(cpu, amp=True) == torch.bfloat16
    assert engine.training_precision(cpu, amp=False) is None
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)  # emulated bfloat16 would be slower
    assert engine.training_precision(cpu, amp=True) is None


def test_native_bf16_read_from_the_cpu_flags():
    from hemaseg.hardware import cpu_has_native_bf16

    assert cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert not cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n")
    assert not cpu_has_native_bf16("")  # no flags line (not Linux x86): float32
