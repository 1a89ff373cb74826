"""LoRA layers on real modules: PEFT parity, no-op at init, merge == unmerged, stock-MHA parity."""

import copy

import pytest
import torch
from sam3.model.model_misc import MultiheadAttentionWrapper
from sam3.model.vitdet import Attention as ViTAttention
from synthetic import randomize_lora
from torch import nn

from sam3_lora.lora import LoraDelta, LoraLinear, LoraMultiheadAttention


def assert_close_rel(a, b, rel=1e-5):
    err = (a - b).abs().max() / b.abs().max().clamp_min(1e-12)
    assert err < rel, f"relative error {err:.2e} > {rel}"


def test_lora_linear_matches_peft():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    ours = LoraLinear(copy.deepcopy(base), {"full": (0, 40)}, rank=4, alpha=8)
    randomize_lora(ours)

    net = nn.Sequential()
    net.add_module("lin", copy.deepcopy(base))
    ref = peft.get_peft_model(net, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["lin"]))
    layer = ref.base_model.model.lin
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora["full"].lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora["full"].lora_B)

    x = torch.randn(5, 7, 24)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(ours.lora["full"].lora_A.grad, layer.lora_A["default"].weight.grad)
    torch.testing.assert_close(ours.lora["full"].lora_B.grad, layer.lora_B["default"].weight.grad)


def test_rslora_scale():
    assert LoraDelta(8, 8, rank=16, alpha=32).scale == pytest.approx(2.0)
    assert LoraDelta(8, 8, rank=16, alpha=32, use_rslora=True).scale == pytest.approx(8.0)


def test_init_is_kaiming_a_zero_b():
    d = LoraDelta(256, 64, rank=8, alpha=16)
    assert torch.count_nonzero(d.lora_B) == 0
    bound = 1 / 256**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 256
    assert d.lora_A.abs().max() <= bound and d.lora_A.abs().max() > 0.9 * bound


def _vit_attention():
    torch.manual_seed(0)
    return ViTAttention(dim=32, num_heads=4, qkv_bias=True, use_rope=False).eval()


@pytest.mark.parametrize("slices", [("q", "v"), ("q", "k", "v"), ("k",)])
def test_packed_qkv_per_slice(slices):
    attn = _vit_attention()
    x = torch.randn(2, 4, 4, 32)
    before = attn(x)
    d = 32
    rows = {"q": (0, d), "k": (d, 2 * d), "v": (2 * d, 3 * d)}
    attn.qkv = LoraLinear(attn.qkv, {s: rows[s] for s in slices}, rank=2, alpha=4)
    torch.testing.assert_close(attn(x), before)  # fresh LoRA is a no-op

    randomize_lora(attn)
    unmerged = attn(x)
    # The update touches only the chosen rows of the packed weight.
    delta = torch.zeros_like(attn.qkv.base_layer.weight)
    for s in slices:
        delta[slice(*rows[s])] = attn.qkv.lora[s].delta_weight()
    untouched = [r for name, r in rows.items() if name not in slices]
    for r in untouched:
        assert torch.count_nonzero(delta[slice(*r)]) == 0
    attn.qkv.merge()
    assert_close_rel(attn(x), unmerged)
    attn.qkv.unmerge()
    assert_close_rel(attn(x), unmerged)
    assert not torch.allclose(unmerged, before)


def _mha_cases():
    yield "plain_seq_first", nn.MultiheadAttention(32, 4), {}
    yield "wrapper_batch_first", MultiheadAttentionWrapper(32, 4, batch_first=True), {}
    yield "key_padding_mask", nn.MultiheadAttention(32, 4), {"kpm": True}
    yield "float_attn_mask_3d", MultiheadAttentionWrapper(32, 4), {"mask3d": True}
    yield "bool_attn_mask_2d", nn.MultiheadAttention(32, 4, batch_first=True), {"mask2d": True}
    yield "self_attention_qkv_same", MultiheadAttentionWrapper(32, 4, batch_first=True), {"same": "qkv"}
    yield "self_attention_qk_same_kpm", nn.MultiheadAttention(32, 4), {"same": "qk", "kpm": True}


@pytest.mark.parametrize("name,mha,opts", list(_mha_cases()), ids=[c[0] for c in _mha_cases()])
@pytest.mark.parametrize("need_weights", [True, False])
def test_lora_mha_matches_stock_with_merged_weights(name, mha, opts, need_weights):
    """Our LoRA attention == the stock module running on weights with the update added."""
    torch.manual_seed(1)
    L, S, N, E, H = 5, 7, 3, 32, 4
    bf = mha.batch_first
    shape = (lambda n: (N, n, E)) if bf else (lambda n: (n, N, E))
    q, k, v = torch.randn(shape(L)), torch.randn(shape(S)), torch.randn(shape(S))
    if opts.get("same"):  # self-attention: the module sees the very same tensor object twice or thrice
        L = S
        q = k = torch.randn(shape(S))
        v = q if opts["same"] == "qkv" else v
    kw = {"need_weights": need_weights}
    if opts.get("kpm"):
        kw["key_padding_mask"] = torch.rand(N, S) > 0.7
        kw["key_padding_mask"][:, 0] = False
    if opts.get("mask3d"):
        kw["attn_mask"] = torch.randn(N * H, L, S)
    if opts.get("mask2d"):
        kw["attn_mask"] = torch.rand(L, S) > 0.8
        kw["attn_mask"][:, 0] = False
    mha.eval()
    stock = copy.deepcopy(mha)
    lora = LoraMultiheadAttention(mha, ("q", "k", "v", "out"), rank=4, alpha=8).eval()
    torch.testing.assert_close(lora(q, k, v, **kw)[0], stock(q, k, v, **kw)[0], rtol=1e-5, atol=1e-6)

    randomize_lora(lora)
    out, weights = lora(q, k, v, **kw)
    with torch.no_grad():
        e = E
        for i, s in enumerate("qkv"):
            stock.in_proj_weight[i * e : (i + 1) * e] += lora.lora[s].delta_weight()
        stock.out_proj.weight += lora.lora["out"].delta_weight()
    ref_out, ref_weights = stock(q, k, v, **kw)
    assert_close_rel(out, ref_out)
    if ref_weights is None:
        assert weights is None
    else:
        assert_close_rel(weights, ref_weights)

    lora.merge()
    assert_close_rel(lora(q, k, v, **kw)[0], out)
    lora.unmerge()
    assert_close_rel(lora(q, k, v, **kw)[0], out)


def test_mha_out_proj_lora_takes_effect_and_gets_gradient():
    """Stock MHA hands out_proj.weight straight to F.multi_head_attention_forward,
    so wrapping out_proj as a module would do nothing. Ours must change the output."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2)
    lora = LoraMultiheadAttention(mha, ("out",), rank=2, alpha=2)
    x = torch.randn(4, 2, 16)
    before = lora(x, x, x)[0].detach()
    randomize_lora(lora)
    after = lora(x, x, x)[0]
    assert not torch.allclose(before, after)
    after.sum().backward()
    assert lora.lora["out"].lora_A.grad.abs().sum() > 0
    assert lora.lora["out"].lora_B.grad.abs().sum() > 0


def test_merge_unmerge_restores_base_weights():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2)
    original = mha.in_proj_weight.detach().clone(), mha.out_proj.weight.detach().clone()
    lora = LoraMultiheadAttention(mha, ("q", "v", "out"), rank=2, alpha=4)
    randomize_lora(lora)
    lora.merge()
    assert not torch.allclose(mha.in_proj_weight, original[0])
    lora.merge()  # idempotent
    lora.unmerge()
    torch.testing.assert_close(mha.in_proj_weight, original[0])
    torch.testing.assert_close(mha.out_proj.weight, original[1])


def test_attention_module_attributes_still_readable():
    mha = MultiheadAttentionWrapper(16, 2, batch_first=True)
    lora = LoraMultiheadAttention(mha, ("q",), rank=2, alpha=4)
    assert lora.num_heads == 2 and lora.batch_first and lora.embed_dim == 16


def test_unsupported_mha_is_refused():
    with pytest.raises(ValueError, match="kdim == vdim"):
        LoraMultiheadAttention(nn.MultiheadAttention(16, 2, kdim=8, vdim=8), ("q",), rank=2, alpha=4)
    with pytest.raises(ValueError, match="subset of q, k, v, out"):
        LoraMultiheadAttention(nn.MultiheadAttention(16, 2), ("x",), rank=2, alpha=4)


def test_private_torch_mask_helpers_behave_as_our_attention_expects():
    """sam3_lora.lora.layers borrows torch's private mask helpers (as nn.MultiheadAttention uses
    them); if a torch release renames or changes them, this fails first, loudly."""
    from sam3_lora.lora.layers import canonical_mask, none_or_dtype

    bool_mask = torch.tensor([[False, True]])
    as_float = canonical_mask(
        mask=bool_mask, mask_name="m", other_type=None, other_name="", target_type=torch.float32, check_other=False
    )
    assert as_float.dtype == torch.float32 and as_float[0, 0] == 0 and as_float[0, 1] == float("-inf")
    assert none_or_dtype(None) is None and none_or_dtype(as_float) == torch.float32
    with pytest.raises(AssertionError):
        canonical_mask(
            mask=torch.tensor([[1, 0]]), mask_name="m", other_type=None, other_name="", target_type=torch.float32
        )
