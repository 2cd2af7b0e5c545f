"""Triton homologous attention (impl triton / flex / fused) on the CPU through Triton's
interpreter, against a Python loop reference of Eq. (6): kept keys, the tie rule, both cls
modes, values, gradients, K = 1 and K = L, TopK accuracy, fp32 ranking of bf16 inputs, the
model end to end.

Triton builds its own and our kernels as interpreted or compiled when they are decorated (at
import) and reads TRITON_INTERPRET again at launch. So: if Triton is not imported yet (or was
imported interpreted), the variable is set for the import of Triton and the kernel modules and
during each test here; if another module already imported Triton compiled (timm does, so a
whole-suite run does), this file runs itself once more in a fresh process with the variable set
(``test_all_in_a_fresh_interpreter_process``) and its in-process tests skip.
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mixedae.model.attention.homologous import HomologousContext, homologous_attention
from mixedae.runtime.errors import ConfigError


def _triton_state() -> str:
    """'absent', 'interpreted' or 'compiled' (how Triton's own library was decorated)."""
    std = sys.modules.get("triton.language.standard")
    if std is None:
        return "absent"
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    fns = [f for f in vars(std).values() if isinstance(f, (JITFunction, InterpretedFunction))]
    return "interpreted" if fns and all(isinstance(f, InterpretedFunction) for f in fns) \
        else "compiled"


IN_PROCESS = _triton_state() != "compiled"
hat = None
if IN_PROCESS:
    _old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton", reason="Triton is not installed (the triton/flex/fused "
                                             "impls need it; sdpa does not)")
        hat = importlib.import_module("mixedae.model.attention.triton_select")
        importlib.import_module("mixedae.model.attention.triton_fused")
    finally:
        if _old is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = _old

MODES = ("always_visible", "topk")


@pytest.fixture(autouse=True)
def _interpret(request, monkeypatch):
    if not IN_PROCESS and request.node.name != "test_all_in_a_fresh_interpreter_process":
        pytest.skip("Triton was imported compiled in this process: covered by "
                    "test_all_in_a_fresh_interpreter_process")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_all_in_a_fresh_interpreter_process():
    if IN_PROCESS:
        pytest.skip("the tests of this file run in this process")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:logging", str(Path(__file__))], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=1200)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0 and " passed" in proc.stdout, tail
    last = proc.stdout.strip().splitlines()[-1]
    assert " passed, 1 skipped" in last and "failed" not in last, tail  # skipped: this test


def qkv(B=2, H=2, N=17, d=8, seed=0, dtype=torch.float32):
    """Values in multiples of 1/2 from [-1, 1]: every logit is exact in fp32 whatever the
    summation order, so the kernel and the reference rank identical numbers, ties included."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(-2, 3, (B, H, N, d), generator=g) / 2).to(dtype) for _ in range(3)]


def loop_keep(q, k, K, p=1, cls_mode="always_visible"):
    return keep_from_logits(q.double() @ k.double().transpose(-1, -2), K, p, cls_mode)


def keep_from_logits(logits, K, p=1, cls_mode="always_visible"):
    """Literal per-row selection: candidates sorted by (−logit, key index), first K kept."""
    B, H, N, _ = logits.shape
    logits = logits.tolist()
    keep = torch.zeros(B, H, N, N, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                if cls_mode == "always_visible" and i < p:
                    keep[b, h, i] = True
                    continue
                cand = range(N) if cls_mode == "topk" else range(p, N)
                best = sorted(cand, key=lambda j: (-logits[b][h][i][j], j))[:K]
                keep[b, h, i, best] = True
                if cls_mode == "always_visible":
                    keep[b, h, i, :p] = True
    return keep


def loop_attention(q, k, v, keep):
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return logits.masked_fill(~keep, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("cls_mode", MODES)
@pytest.mark.parametrize("K", [1, 5, "all"])
def test_selection_equals_loop_reference(K, cls_mode):
    q, k, _ = qkv(seed=1)
    N = q.shape[2]
    K = (N if cls_mode == "topk" else N - 1) if K == "all" else K
    bias, _ = hat.homologous_select(q, k, K, cls_mode=cls_mode)
    keep = bias == 0
    assert torch.isinf(bias[~keep]).all() and (bias[~keep] < 0).all()
    ref = loop_keep(q, k, K, 1, cls_mode)
    assert torch.equal(keep, ref)
    if cls_mode == "topk":
        assert keep.sum(-1).eq(K).all()                         # every row, cls included
    else:
        assert keep[:, :, 1:, 1:].sum(-1).eq(K).all()           # K patch keys per patch row
        assert keep[:, :, 0].all() and keep[:, :, :, 0].all()   # cls: global, always a key
    boolean, _ = hat.homologous_select(q, k, K, cls_mode=cls_mode, out="keep")
    assert boolean.dtype == torch.bool and torch.equal(boolean, ref)


@pytest.mark.parametrize("cls_mode", MODES)
def test_tie_rule_lowest_key_index_wins(cls_mode):
    B, H, N, d = 1, 1, 20, 16
    q = torch.ones(B, H, N, d)
    k = torch.ones(B, H, N, d)                      # every logit ties
    k[..., 7, :] = 2.0                              # ... except key 7, strictly the largest
    keep = hat.homologous_select(q, k, 4, cls_mode=cls_mode, out="keep")[0][0, 0]
    first = 0 if cls_mode == "topk" else 1
    expect = torch.zeros(N, dtype=torch.bool)
    expect[[7, first, first + 1, first + 2]] = True
    rows = keep if cls_mode == "topk" else keep[1:, 1:]
    assert torch.equal(rows, (expect if cls_mode == "topk" else expect[1:]).expand_as(rows))


@pytest.mark.parametrize("impl", ["triton", "fused"])
@pytest.mark.parametrize("cls_mode", MODES)
@pytest.mark.parametrize("K", [1, 6, "all"])
def test_values_and_grads_equal_loop_reference(impl, cls_mode, K):
    q, k, v = (t.requires_grad_() for t in qkv(seed=2, d=16))
    N = q.shape[2]
    K = (N if cls_mode == "topk" else N - 1) if K == "all" else K
    ctx = HomologousContext(k=K, impl=impl, cls_mode=cls_mode)
    out = homologous_attention(q, k, v, ctx)
    keep = loop_keep(q.detach(), k.detach(), K, 1, cls_mode)
    ref = loop_attention(*(t.double() for t in (q, k, v)), keep)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    g1 = torch.autograd.grad(out, (q, k, v), g.float())
    g2 = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("cls_mode", MODES)
def test_flex_forward_equals_loop_reference(cls_mode):
    q, k, v = qkv(seed=3, d=16)                     # CPU FlexAttention has no backward
    ctx = HomologousContext(k=5, impl="flex", cls_mode=cls_mode)
    out = homologous_attention(q, k, v, ctx)
    ref = loop_attention(*(t.double() for t in (q, k, v)), loop_keep(q, k, 5, 1, cls_mode))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["triton", "fused"])
def test_topk_accuracy_counts_same_source_keys(impl):
    q, k, v = qkv(seed=4)
    src = torch.randint(0, 3, (2, 16), generator=torch.Generator().manual_seed(0))
    ctx = HomologousContext(k=5, impl=impl, src=src)
    homologous_attention(q, k, v, ctx)
    keep = loop_keep(q, k, 5)[:, :, 1:, 1:]
    same = src[:, None, :, None] == src[:, None, None, :]
    assert ctx.accuracies[0].item() == pytest.approx((keep & same).sum().item() / keep.sum().item())


def test_bf16_inputs_rank_on_fp32_logits():
    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(1, 2, 65, 32, generator=g).bfloat16() for _ in range(2))
    exact = q.float() @ k.float().transpose(-1, -2)
    keep = hat.homologous_select(q, k, 16, out="keep")[0]
    kth = exact[:, :, 1:, 1:].topk(16, -1).values[..., -1:]
    assert torch.equal(keep[:, :, 1:, 1:], exact[:, :, 1:, 1:] >= kth)
    low = exact.bfloat16().float()                  # bf16-rounded logits would tie
    assert (low[:, :, 1:, 1:] == low[:, :, 1:, 1:].topk(16, -1).values[..., -1:]).sum(-1).gt(
        1).any()


def test_custom_ops_fake_kernels_and_autograd_pass_opcheck():
    """torch.compile sees the kernels as custom ops: their fake (meta) kernels must give the
    real outputs' shapes, dtypes and strides, and the fused op's autograd must be sound."""
    fused = importlib.import_module("mixedae.model.attention.triton_fused")
    q, k, v = qkv(B=1, H=2, N=9, d=16, seed=6)
    qkv_view = torch.stack([q, k, v], -2)[..., 0, :]  # strided like the ViT's q
    src = torch.tensor([[0, 1, 0, 1, 2, 2, 0, 1]])
    torch.library.opcheck(hat._select_op, (qkv_view, k, 3, 1, False, True, src))
    args = (qkv_view.requires_grad_(), k.requires_grad_(), v.requires_grad_(), 3, 1, True, None)
    torch.library.opcheck(fused._fwd_op, args)


def test_bad_device_and_k_fail_with_one_clear_line():
    msg = hat.unavailable_reason(torch.device("cpu"), "fused", interpret=False)
    assert "attn_impl='fused'" in msg and "CUDA" in msg and "sdpa" in msg
    assert hat.unavailable_reason(torch.device("cpu"), interpret=True) is None
    q, k, _ = qkv()
    with pytest.raises(ValueError, match="K=17 outside"):
        hat.homologous_select(q, k, 17)             # 16 patch keys in always_visible mode
    with pytest.raises(ValueError, match="cls_mode"):
        hat.homologous_select(q, k, 3, cls_mode="never")
    with pytest.raises(ValueError, match="attn_impl='triton'.*CUDA"):
        hat.homologous_select(q.to("meta"), k.to("meta"), 3)   # no silent fallback


def test_pretrain_refuses_triton_impl_on_cpu_before_any_work(tmp_path, capsys, monkeypatch):
    from mixedae.pretrain import command
    monkeypatch.setattr(hat, "INTERPRET", False)    # as in any process without the variable
    data = tmp_path / "data" / "c"
    data.mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (40, 40), (i * 30, 90, 200)).save(data / f"{i}.png")
    out = tmp_path / "out"
    rc = command.main(["--preset", "mixedae_tiny", "--model", "micro", "--img-size", "32",
                      "--patch-size", "8", "--mask-patch-size", "16", "--batch-size", "8",
                      "--device", "cpu", "--set", "attn_impl=fused", "--data",
                      str(tmp_path / "data"), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("mixedae pretrain: error: attn_impl='fused'") and "sdpa" in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_config_accepts_triton_impls():
    from mixedae.pretrain.config import get_preset
    for impl in ("triton", "flex", "fused"):
        assert get_preset("mixedae_tiny", attn_impl=impl).attn_impl == impl
    with pytest.raises(ConfigError, match="attn_impl='cuda'"):
        get_preset("mixedae_tiny", attn_impl="cuda")


@pytest.mark.parametrize("impl", ["triton", "fused"])
def test_micro_model_loss_and_grads_equal_sdpa(impl, single_thread):
    from mixedae.model.mixed_autoencoder import MixedAutoencoder
    from mixedae.pretrain.config import get_preset
    kw = dict(model="micro", img_size=32, patch_size=8, mask_patch_size=8, batch_size=4,
              decoder_dim=32, decoder_depth=1, decoder_heads=2)
    torch.manual_seed(0)
    ref_model = MixedAutoencoder(get_preset("mixedae_tiny", **kw).model_config())
    model = MixedAutoencoder(get_preset("mixedae_tiny", **kw, attn_impl=impl).model_config())
    model.load_state_dict(ref_model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for m in (ref_model, model):
        torch.manual_seed(7)
        out = m(x)
        out["loss"].backward()
        outs.append(out)
    torch.testing.assert_close(outs[1]["loss"], outs[0]["loss"])
    torch.testing.assert_close(outs[1]["topk_acc"], outs[0]["topk_acc"])
    for (n, a), b in zip(ref_model.named_parameters(), model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=n)
