"""Weighted kNN against a hand-computed vote."""

import math

import torch
import torch.nn.functional as F

from dino_ablate.knn import knn_predict


def test_weighted_vote_hand_computed() -> None:
    # Query at angle 0. Train: two class-0 points at 80 degrees, one class-1 point at 10
    # degrees. With k = 3 and T = 0.07 the near class-1 point outweighs the two far ones:
    # exp(cos10/T) = exp(14.07) vs 2 exp(cos80/T) = 2 exp(2.48).
    def unit(deg: float) -> list[float]:
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]
    train = torch.tensor([unit(80), unit(-80), unit(10)])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([unit(0)])
    assert knn_predict(train, labels, query, 2, k=3, temperature=0.07).tolist() == [1]
    # With a huge temperature the weights are equal and the majority wins.
    assert knn_predict(train, labels, query, 2, k=3, temperature=1e6).tolist() == [0]
    # k = 2 keeps the two most similar: 10 degrees (class 1) and one 80-degree point (class 0).
    assert knn_predict(train, labels, query, 2, k=1, temperature=0.07).tolist() == [1]


def test_matches_bruteforce_reference() -> None:
    g = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(50, 8, generator=g), dim=1)
    labels = torch.randint(0, 4, (50,), generator=g)
    query = F.normalize(torch.randn(9, 8, generator=g), dim=1)
    ours = knn_predict(train, labels, query, 4, k=5, temperature=0.07, chunk=4)
    for i in range(9):
        sims = [(float(query[i] @ train[j]), int(labels[j])) for j in range(50)]
        sims.sort(reverse=True)
        votes = [0.0] * 4
        for s, c in sims[:5]:
            votes[c] += math.exp(s / 0.07)
        assert int(ours[i]) == max(range(4), key=lambda c: votes[c])
