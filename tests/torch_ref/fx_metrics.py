"""PyTorch reference for train/metrics: per-row argmax, `label in logits.topk(k).indices` (k = min(5, C)) and the
argmax confusion counts, on random logits without ties. For C = 1000 half of the labels are drawn from the
row's 8 largest logits so that top-5 hits and misses both occur."""
import torch

CONFIGS = {"c10": (200, 10), "c3": (50, 3), "c1000": (64, 1000), "c2": (31, 2)}


def build():
    out = {}
    for name, (n, c) in CONFIGS.items():
        x = torch.randn(n, c)
        t = torch.randint(0, c, (n,))
        if c > 8:
            near = x.topk(8, dim=1).indices.gather(1, torch.randint(0, 8, (n, 1))).squeeze(1)
            t = torch.where(torch.rand(n) < 0.5, near, t)
        k = min(5, c)
        topk_hit = (x.topk(k, dim=1).indices == t[:, None]).any(dim=1)
        pred = x.argmax(dim=1)
        out.update({f"{name}.x": x, f"{name}.t": t, f"{name}.pred": pred, f"{name}.topk_hit": topk_hit.int(),
                    f"{name}.k": torch.tensor([k])})
    return out
