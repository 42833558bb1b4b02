"""Last-block [CLS] attention maps: the maths against independent computations, the 60 % masks
against hand-computed values and the official (ascending) formulation, and the saved files."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dino_ablate.attention import choose_positions, cls_attention, save_attention, threshold_masks
from dino_ablate.config import ModelConfig
from dino_ablate.data import IMAGENET_MEAN, IMAGENET_STD, EvalSet
from dino_ablate.model import build_backbone, set_fused_attention

CPU = torch.device("cpu")


def _backbone(patch_size: int = 4, *, heads: int = 4, in_chans: int = 1, depth: int = 2,
              drop_path: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="vit_tiny_patch16_224", patch_size=patch_size, embed_dim=32,
                      depth=depth, num_heads=heads)
    backbone = build_backbone(cfg, 16, in_chans, drop_path)
    # Random init gives almost uniform attention; larger weights make the test discriminating.
    with torch.no_grad():
        for block in backbone.blocks:  # type: ignore[union-attr]
            block.attn.qkv.weight.mul_(8.0)  # type: ignore[union-attr]
    return backbone


def _plain_path_attention(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """timm's own softmax matrix of the last block (non-fused path), caught at its dropout."""
    model = copy.deepcopy(backbone).eval()
    assert set_fused_attention(model, False) > 0
    caught: list[torch.Tensor] = []
    attn_drop = model.blocks[-1].attn.attn_drop  # type: ignore[index, union-attr]
    handle = attn_drop.register_forward_hook(lambda _m, args, _out: caught.append(args[0]))
    with torch.no_grad():
        model(images)
    handle.remove()
    full = caught[0]  # (B, heads, N, N), rows sum to 1 over all tokens
    patches = full[:, :, 0, 1:]
    return patches / patches.sum(dim=-1, keepdim=True)


def _by_hand(backbone: nn.Module, images: torch.Tensor, head: int) -> torch.Tensor:
    """One head's [CLS] row written out from the weights, in float64: (B, N - 1)."""
    model: nn.Module = backbone.eval()
    with torch.no_grad():
        # forward_features of timm 1.0 up to the last block, step by step
        tokens = model.patch_embed(images)  # type: ignore[operator]
        tokens = model._pos_embed(tokens)  # type: ignore[operator]
        tokens = model.norm_pre(model.patch_drop(tokens))  # type: ignore[operator]
        for block in list(model.blocks)[:-1]:  # type: ignore[call-overload]
            tokens = block(tokens)
        last = model.blocks[-1]  # type: ignore[index]
        x = F.layer_norm(tokens.double(), (tokens.shape[-1],), last.norm1.weight.double(),
                         last.norm1.bias.double(), last.norm1.eps)
        dim = x.shape[-1]
        head_dim = dim // last.attn.num_heads
        weight, bias = last.attn.qkv.weight.double(), last.attn.qkv.bias.double()
        rows_q = slice(head * head_dim, (head + 1) * head_dim)
        rows_k = slice(dim + head * head_dim, dim + (head + 1) * head_dim)
        out = []
        for b in range(x.shape[0]):
            q = weight[rows_q] @ x[b, 0] + bias[rows_q]
            logits = [float((weight[rows_k] @ x[b, n] + bias[rows_k]) @ q) / math.sqrt(head_dim)
                      for n in range(x.shape[1])]
            top = max(logits)
            exp = [math.exp(value - top) for value in logits]
            patch_exp = exp[1:]
            out.append([value / sum(patch_exp) for value in patch_exp])
        return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(("patch_size", "side"), [(4, 16), (5, 16), (4, 24)])
def test_cls_attention_matches_timm_plain_path(patch_size: int, side: int) -> None:
    """Fused backbone vs timm's non-fused softmax matrix; /5 pads 16 -> 20 (4x4 patches), and a
    24 px image re-samples the position embedding (6x6)."""
    backbone = _backbone(patch_size)
    assert backbone.blocks[-1].attn.fused_attn  # type: ignore[index, union-attr]
    images = torch.randn(3, 1, side, side, generator=torch.Generator().manual_seed(1))
    attention = cls_attention(backbone, images)
    grid = math.ceil(side / patch_size)
    assert attention.shape == (3, 4, grid, grid)
    assert attention.dtype == torch.float32
    expected = _plain_path_attention(backbone, images)
    torch.testing.assert_close(attention.flatten(-2), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(attention.sum(dim=(-2, -1)), torch.ones(3, 4))
    # Not a near-uniform map: the comparison above could not pass by accident.
    assert float(attention.amax()) > 3.0 / (grid * grid)


def test_cls_attention_matches_hand_written_head() -> None:
    backbone = _backbone(4, heads=2, depth=3)
    images = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    attention = cls_attention(backbone, images)
    for head in range(2):
        expected = _by_hand(backbone, images, head)
        torch.testing.assert_close(attention[:, head].flatten(-2).double(), expected,
                                   rtol=1e-4, atol=1e-6)


def test_cls_attention_leaves_the_backbone_unchanged() -> None:
    backbone = _backbone(4, drop_path=0.5).train()
    images = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.eval()
    with torch.no_grad():
        before = backbone(images)
    backbone.train()
    first = cls_attention(backbone, images)
    second = cls_attention(backbone, images)
    assert backbone.training  # mode restored
    # Drop-path is active in train mode; the maps are computed in eval mode, so they repeat.
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    attn = backbone.blocks[-1].attn  # type: ignore[index, union-attr]
    assert not attn._forward_pre_hooks and not attn._forward_hooks
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), before, rtol=0, atol=0)


def test_cls_attention_rejects_a_network_that_is_not_a_vit() -> None:
    with pytest.raises(TypeError, match="VisionTransformer"):
        cls_attention(nn.Linear(3, 3), torch.zeros(1, 3))


def test_threshold_masks_hand_values() -> None:
    attn = torch.tensor([[0.15, 0.5], [0.05, 0.3]])
    # 0.5 alone < 60 %; 0.5 + 0.3 >= 60 %: the two largest
    assert threshold_masks(attn).tolist() == [[False, True], [False, True]]
    # exactly on the boundary (dyadic, so exact in float): 0.5 + 0.25 = 0.75 is enough
    assert threshold_masks(torch.tensor([0.125, 0.5, 0.125, 0.25]).view(2, 2),
                           keep=0.75).tolist() == [[False, True], [False, True]]
    # one patch with 70 % of the mass
    assert threshold_masks(torch.tensor([[0.7, 0.1], [0.1, 0.1]])).tolist() == [
        [True, False], [False, False]]
    # unnormalised input: the mass is relative; keep=1 keeps every patch with attention
    assert threshold_masks(3.0 * attn).tolist() == [[False, True], [False, True]]
    assert threshold_masks(torch.tensor([[0.0, 2.0], [1.0, 1.0]]), keep=1.0).tolist() == [
        [False, True], [True, True]]
    with pytest.raises(ValueError, match="keep"):
        threshold_masks(attn, keep=0.0)


def _official_style_masks(attn: torch.Tensor, keep: float) -> torch.Tensor:
    """The visualiser's formulation: ascending sort, keep where the cumulative mass > 1 - keep."""
    flat = attn.flatten(-2)
    values, order = torch.sort(flat / flat.sum(-1, keepdim=True), dim=-1)
    kept_sorted = values.cumsum(-1) > 1 - keep
    return torch.gather(kept_sorted, -1, torch.argsort(order, dim=-1)).reshape(attn.shape)


def test_threshold_masks_match_the_official_formulation_and_are_minimal() -> None:
    attn = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(4)).double() ** 4
    masks = threshold_masks(attn)
    assert masks.shape == attn.shape and masks.dtype == torch.bool
    assert torch.equal(masks, _official_style_masks(attn, 0.6))
    share = attn / attn.sum(dim=(-2, -1), keepdim=True)
    kept = (share * masks).sum(dim=(-2, -1))
    smallest_kept = torch.where(masks, share, torch.inf).amin(dim=(-2, -1))
    assert bool((kept >= 0.6 - 1e-12).all())
    assert bool((kept - smallest_kept < 0.6).all())  # dropping any kept patch falls short
    largest_dropped = torch.where(masks, -torch.inf, share).amax(dim=(-2, -1))
    assert bool((largest_dropped <= smallest_kept).all())  # the kept set is a top set


def test_choose_positions_is_seeded_sorted_and_bounded() -> None:
    first = choose_positions(397, 8, seed=0)
    assert first == choose_positions(397, 8, seed=0)
    assert first == sorted(set(first)) and len(first) == 8 and max(first) < 397
    assert first != choose_positions(397, 8, seed=1)
    assert choose_positions(5, 8, seed=0) == [0, 1, 2, 3, 4]


def _in_memory_queries(count: int = 40, channels: int = 1, side: int = 16) -> EvalSet:
    images = torch.randn(count, channels, side, side, generator=torch.Generator().manual_seed(5))
    return EvalSet(labels=torch.arange(count) % 10, images=images)


def test_save_attention_writes_the_contract_files(tmp_path: Path) -> None:
    from matplotlib.image import imread

    teacher, student = _backbone(4, seed=0), _backbone(4, seed=1, drop_path=0.1).train()
    queries = _in_memory_queries()
    mean, std = (0.3,), (0.4,)
    out = tmp_path / "run" / "attention"
    written = save_attention(out, teacher, student, queries, n_images=8, seed=0, patch_size=4,
                             epoch=7, mean=mean, std=std, device=CPU)
    assert written == [out / "maps.npz", out / "teacher.png", out / "student.png"]
    assert sorted(p.name for p in out.iterdir()) == ["maps.npz", "student.png", "teacher.png"]
    with np.load(out / "maps.npz", allow_pickle=False) as npz:
        data = {key: npz[key] for key in npz.files}
    assert set(data) == {"images", "indices", "teacher", "student", "teacher_mask",
                         "student_mask", "patch_size", "epoch"}
    positions = choose_positions(len(queries), 8, 0)
    assert data["indices"].dtype == np.int64 and data["indices"].tolist() == positions
    assert data["images"].dtype == np.float32 and data["images"].shape == (8, 16, 16, 1)
    assert queries.images is not None
    shown = (queries.images[positions] * 0.4 + 0.3).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(data["images"], shown, rtol=0, atol=1e-6)
    assert 0.0 <= data["images"].min() and data["images"].max() <= 1.0
    for name, network in (("teacher", teacher), ("student", student)):
        maps = data[name]
        assert maps.dtype == np.float32 and maps.shape == (8, 4, 4, 4)
        np.testing.assert_allclose(maps.sum(axis=(-2, -1)), 1.0, rtol=1e-5)
        expected = cls_attention(network, queries.images[positions]).numpy()
        np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-7)
        mask = data[f"{name}_mask"]
        assert mask.dtype == np.bool_
        assert np.array_equal(mask, threshold_masks(torch.from_numpy(maps)).numpy())
    assert not np.allclose(data["teacher"], data["student"])
    assert int(data["patch_size"]) == 4 and int(data["epoch"]) == 7
    for name in ("teacher", "student"):
        picture = imread(out / f"{name}.png")
        assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100


def test_save_attention_is_deterministic_and_overwrites(tmp_path: Path) -> None:
    teacher = _backbone(4)
    queries = _in_memory_queries()
    kwargs = {"n_images": 3, "seed": 0, "patch_size": 4, "epoch": 1, "mean": (0.0,),
              "std": (1.0,), "device": CPU}
    save_attention(tmp_path / "a", teacher, teacher, queries, **kwargs)  # type: ignore[arg-type]
    save_attention(tmp_path / "b", teacher, teacher, queries, **kwargs)  # type: ignore[arg-type]
    save_attention(tmp_path / "b", teacher, teacher, queries, **kwargs)  # type: ignore[arg-type]
    with np.load(tmp_path / "a" / "maps.npz") as a, np.load(tmp_path / "b" / "maps.npz") as b:
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "maps.npz", "student.png", "teacher.png"]  # no temporary files left behind


class _FolderLike(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """An ImageFolder stand-in: (normalised image, label) per index."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], 0


def test_save_attention_reads_folder_sets_and_rgb(tmp_path: Path) -> None:
    """A lazily decoded set (EvalSet.dataset + indices) gives the same files as in memory."""
    backbone = _backbone(4, in_chans=3)
    memory = _in_memory_queries(count=12, channels=3)
    assert memory.images is not None
    reversed_order = list(range(11, -1, -1))  # the folder set's positions map to these indices
    folder = EvalSet(labels=memory.labels, dataset=_FolderLike(memory.images.flip(0)),
                     indices=reversed_order)
    kwargs = {"n_images": 5, "patch_size": 4, "epoch": 2, "mean": IMAGENET_MEAN,
              "std": IMAGENET_STD, "device": CPU}
    save_attention(tmp_path / "mem", backbone, backbone, memory, **kwargs)  # type: ignore[arg-type]
    save_attention(tmp_path / "dir", backbone, backbone, folder, **kwargs)  # type: ignore[arg-type]
    with np.load(tmp_path / "mem" / "maps.npz") as a, np.load(tmp_path / "dir" / "maps.npz") as b:
        assert a["images"].shape == (5, 16, 16, 3)
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_save_attention_with_no_images_writes_nothing(tmp_path: Path) -> None:
    backbone = _backbone(4)
    assert save_attention(tmp_path / "att", backbone, backbone, _in_memory_queries(),
                          n_images=0, patch_size=4, epoch=0, mean=(0.0,), std=(1.0,),
                          device=CPU) == []
    assert not (tmp_path / "att").exists()
    with pytest.raises(ValueError, match="n_images"):
        save_attention(tmp_path / "att", backbone, backbone, _in_memory_queries(),
                       n_images=-1, patch_size=4, epoch=0, mean=(0.0,), std=(1.0,),
                       device=CPU)
