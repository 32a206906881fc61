"""PWA's batched multi-scale, multi-modal attention against a slow loop over scales and windows."""

import itertools
import math

import torch
import torch.nn.functional as F

from veloxseg.networks.pwa import PairedWindowAttention, window_pairs


def slow_pwa(attn: PairedWindowAttention, xs):
    m_count, heads = attn.num_modalities, attn.heads
    size = xs[0].shape[2:]
    qs = [c(x) for c, x in zip(attn.q, xs)]
    ks = [c(x) for c, x in zip(attn.k, xs)]
    vs = [c(x) for c, x in zip(attn.v, xs)]
    n = attn.tokens
    offsets = list(itertools.product(range(n[0]), range(n[1]), range(n[2])))
    table = attn.relative_position_bias_table
    outs = [torch.zeros(xs[0].shape[0], attn.v_channels, *size, dtype=xs[0].dtype) for _ in range(m_count)]
    for b in range(xs[0].shape[0]):
        for scale, (big, small) in enumerate(attn.pairs):
            for h in range(heads):
                cq = slice((scale * heads + h) * attn.dim_qk, (scale * heads + h + 1) * attn.dim_qk)
                cv = slice((scale * heads + h) * attn.dim_v, (scale * heads + h + 1) * attn.dim_v)
                pooled = [[F.max_pool3d(t[b:b + 1, c], small, small)[0] for t in ts]
                          for ts, c in ((qs, cq), (ks, cq), (vs, cv))]
                for wd, wh, ww in itertools.product(*(range(s // bb) for s, bb in zip(size, big))):
                    def tokens(t):
                        return torch.stack([t[:, wd * n[0] + i, wh * n[1] + j, ww * n[2] + k] for i, j, k in offsets])
                    q = torch.cat([tokens(t) for t in pooled[0]])
                    k = torch.cat([tokens(t) for t in pooled[1]])
                    v = torch.cat([tokens(t) for t in pooled[2]])
                    scores = q @ k.T / math.sqrt(q.shape[1])
                    for a, (i1, j1, k1) in enumerate(offsets * m_count):
                        for c, (i2, j2, k2) in enumerate(offsets * m_count):
                            idx = ((i1 - i2 + n[0] - 1) * (2 * n[1] - 1) + (j1 - j2 + n[1] - 1)) * (2 * n[2] - 1) \
                                + (k1 - k2 + n[2] - 1)
                            scores[a, c] = scores[a, c] + table[idx, h]
                    o = scores.softmax(-1) @ v
                    t_count = len(offsets)
                    for m in range(m_count):
                        grid = o[m * t_count:(m + 1) * t_count].T.reshape(1, -1, *n)
                        grid = F.interpolate(grid, size=big, mode="trilinear", align_corners=True) if small != (1, 1, 1) else grid
                        outs[m][b, cv, wd * big[0]:(wd + 1) * big[0], wh * big[1]:(wh + 1) * big[1],
                                ww * big[2]:(ww + 1) * big[2]] = grid[0]
    return [mix(o) for mix, o in zip(attn.mixer, outs)]


def test_batched_pwa_equals_slow_reference():
    torch.manual_seed(0)
    size = (8, 8, 4)
    pairs = window_pairs(size, (2, 2, 1))
    assert len(pairs) == 3  # (2,2,1), (4,4,2), (8,8,4)
    attn = PairedWindowAttention(12, 2, pairs, heads=2, min_dim_head=2).double().eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    xs = [torch.randn(2, 12, *size, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        fast = attn(xs)
        slow = slow_pwa(attn, xs)
    for f, s in zip(fast, slow):
        assert torch.allclose(f, s.to(f.dtype), atol=1e-5)


def test_window_pairs_autopet():
    assert [p[0][0] for p in window_pairs((24, 24, 24), (3, 3, 3))] == [3, 6, 12, 24]
    assert [p[0][0] for p in window_pairs((12, 12, 12), (6, 6, 6))] == [6, 12]
    assert [p[0][0] for p in window_pairs((3, 3, 3), (3, 3, 3))] == [3]


def test_pwa_gradients_match_slow_reference():
    torch.manual_seed(1)
    size = (4, 4, 4)
    pairs = window_pairs(size, (2, 2, 2))
    attn = PairedWindowAttention(8, 2, pairs, heads=2, min_dim_head=2, attn_drop=0.0, proj_drop=0.0).double().train()
    xs = [torch.randn(1, 8, *size, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    weights = [torch.randn(1, 8, *size, dtype=torch.float64) for _ in range(2)]

    def grads(fn):
        for p in [*attn.parameters(), *xs]:
            p.grad = None
        sum((o * w).sum() for o, w in zip(fn(xs), weights)).backward()
        return [p.grad.clone() for p in [*attn.parameters(), *xs]]

    for fast, slow in zip(grads(attn), grads(lambda inputs: slow_pwa(attn, inputs))):
        assert torch.allclose(fast, slow, atol=1e-8)
