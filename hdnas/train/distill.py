"""Multi-anchor feature distillation (DIPNet): the student's cell outputs follow the teacher's.

The anchors are the outputs of the live cells, in ``DerivedNet.live`` order, of both nets. Student
cell ``i`` is paired with teacher cell ``i`` when the counts agree; otherwise the net with more cells
contributes evenly spaced ones (:func:`anchor_pairs`), always ending with its last cell. Each student
feature goes through a learned 1×1 conv to the teacher's channel count (:class:`Aligners`; trained
with the student, kept in checkpoints for resuming, never part of the exported net), and the loss
term ``loss.feature_distill`` (:mod:`hdnas.train.losses`) is the mean over anchors of
``L1(align_k(S_k), T_k)``.

Features are read with forward hooks on the cell modules (:class:`FeatureTap`), registered only for
the duration of one forward, so the nets, their outputs and their deep copies (EMA, folding) are
untouched. Only :class:`DerivedNet` teachers (any trained hdnas net, an AdaDSR one, the zoo's
``rfdn`` and ``imdn_space``) have cells to read; others (bicubic, FSRCNN, the faithful IMDN module)
are refused by :func:`anchor_cells`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from hdnas.core.errors import ConfigError
from hdnas.core.network import DerivedNet

__all__ = ["anchor_pairs", "anchor_cells", "Aligners", "FeatureTap", "FeatureDistiller"]


def anchor_pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """``(student cell, teacher cell)`` positions (0-based, in ``live`` order) of the anchors.

    ``k = min(n_student, n_teacher)`` anchors; every cell of the shorter net is one, and the longer net
    gives cell ``(j + 1)·n // k − 1`` for anchor ``j``: evenly spaced, the last cell always included
    (6 teacher cells against 4 student cells pair student 0, 1, 2, 3 with teacher 0, 2, 3, 5).
    """
    if n_student < 1 or n_teacher < 1:
        raise ValueError(f"anchor_pairs: both nets need at least one cell, got {n_student} and {n_teacher}")
    k = min(n_student, n_teacher)

    def spaced(n: int) -> list[int]:
        return [(j + 1) * n // k - 1 for j in range(k)]

    return list(zip(spaced(n_student), spaced(n_teacher)))


def anchor_cells(net: nn.Module, field: str) -> list[nn.Module]:
    """The live cells of ``net`` in ``live`` order; a :class:`ConfigError` naming ``field`` when it has none."""
    if not isinstance(net, DerivedNet):
        raise ConfigError(
            f"{field}: loss.feature_distill reads the teacher's cell outputs, and a {type(net).__name__} has no "
            "cells to read; use a trained hdnas checkpoint (teacher.weights) or a zoo net built from a genotype "
            "(teacher.model=rfdn or imdn_space), or disable loss.feature_distill"
        )
    return [net.cells[f"cell{i}"] for i in net.live]


class Aligners(nn.Module):
    """One 1×1 conv per anchor, student channels -> teacher channels.

    Initialised to the identity on the shared channels (a truncated identity matrix, bias 0), so the
    term starts as plain feature matching and the student is not pulled toward a random projection.
    """

    def __init__(self, n: int, c_student: int, c_teacher: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_student, c_teacher, 1) for _ in range(n))
        with torch.no_grad():
            eye = torch.eye(c_teacher, c_student)[:, :, None, None]
            for conv in self.convs:
                conv.weight.copy_(eye)
                conv.bias.zero_()

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.convs):
            raise ValueError(f"Aligners: expected {len(self.convs)} features, got {len(features)}")
        return [conv(f) for conv, f in zip(self.convs, features)]


class FeatureTap:
    """The outputs of ``modules`` during one forward: ``with tap.capture() as feats: net(x)``."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = list(modules)

    @contextmanager
    def capture(self) -> Iterator[list[torch.Tensor | None]]:
        out: list[torch.Tensor | None] = [None] * len(self.modules)

        def hook(k: int):
            def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                out[k] = output

            return keep

        handles = [m.register_forward_hook(hook(k)) for k, m in enumerate(self.modules)]
        try:
            yield out
        finally:
            for h in handles:
                h.remove()


class FeatureDistiller(nn.Module):
    """The anchors of a student/teacher pair, their taps and the student's aligners (the only parameters)."""

    def __init__(self, student: DerivedNet, teacher: nn.Module, teacher_field: str = "teacher"):
        super().__init__()
        t_cells = anchor_cells(teacher, teacher_field)
        s_cells = anchor_cells(student, "genotype")
        self.pairs = anchor_pairs(len(s_cells), len(t_cells))
        self.aligners = Aligners(len(self.pairs), student.genotype.channels, teacher.genotype.channels)
        # plain lists: the taps must not register the nets' modules as submodules of the distiller
        self._student_tap = FeatureTap([s_cells[s] for s, _ in self.pairs])
        self._teacher_tap = FeatureTap([t_cells[t] for _, t in self.pairs])

    def student(self) -> AbstractContextManager[list[torch.Tensor | None]]:
        """Capture the student's anchor features during the forward run inside the ``with``."""
        return self._student_tap.capture()

    def teacher(self) -> AbstractContextManager[list[torch.Tensor | None]]:
        """Capture the teacher's anchor features likewise."""
        return self._teacher_tap.capture()
