"""PyTorch reference for the losses: F.cross_entropy (mean) with label smoothing, class weights and ignore_index,
and log_softmax + nll_loss; the loss and the logits' gradient for an upstream gradient of the (scalar) loss.
Scalars are stored as 1-element tensors; each config also stores its options (eps, ignore index)."""
import torch
import torch.nn.functional as F

# name: (N, C, label_smoothing, weighted, ignore_index, rows set to ignore_index)
CE_CONFIGS = {
    "plain": (6, 5, 0.0, False, -100, []),
    "smooth": (6, 5, 0.1, False, -100, []),
    "weighted": (7, 5, 0.0, True, -100, []),
    "both": (7, 5, 0.1, True, -100, []),
    "ignore": (8, 6, 0.1, True, -100, [1, 4]),
    "ignore_class": (8, 6, 0.0, False, 2, [0, 3, 5]),  # ignore_index is a real class index
    "batch1": (1, 4, 0.1, False, -100, []),
    "c1000": (8, 1000, 0.1, True, -100, [2]),
}


def build():
    out = {}
    for name, (n, c, eps, weighted, ignore, ignored_rows) in CE_CONFIGS.items():
        x = (2 * torch.randn(n, c)).requires_grad_()
        t = torch.randint(0, c, (n,))
        if ignore >= 0:
            t[t == ignore] = (ignore + 1) % c  # only the chosen rows are ignored
        for r in ignored_rows:
            t[r] = ignore
        w = torch.rand(c) + 0.5 if weighted else None
        gy = torch.tensor(1.7)
        loss = F.cross_entropy(x, t, weight=w, ignore_index=ignore, label_smoothing=eps)
        loss.backward(gy)
        p = f"ce.{name}."
        out.update({p + "x": x, p + "t": t, p + "gy": gy.reshape(1), p + "loss": loss.reshape(1),
                    p + "gx": x.grad, p + "eps": torch.tensor([eps], dtype=torch.float64),
                    p + "ignore": torch.tensor([ignore])})
        if weighted:
            out[p + "w"] = w
    # log_softmax + nll_loss with class weights and an ignored row; also log_softmax alone.
    x = torch.randn(6, 7, requires_grad=True)
    t = torch.randint(0, 7, (6,))
    t[3] = -100
    w = torch.rand(7) + 0.5
    logp = F.log_softmax(x, dim=1)
    logp.retain_grad()
    loss = F.nll_loss(logp, t, weight=w, ignore_index=-100)
    loss.backward(torch.tensor(0.8))
    out.update({"nll.x": x, "nll.t": t, "nll.w": w, "nll.gy": torch.tensor([0.8]), "nll.logp": logp,
                "nll.loss": loss.reshape(1), "nll.glogp": logp.grad, "nll.gx": x.grad})
    x = torch.randn(5, 9, requires_grad=True)
    gy = torch.randn(5, 9)
    y = F.log_softmax(x, dim=1)
    y.backward(gy)
    out.update({"logsm.x": x, "logsm.gy": gy, "logsm.y": y, "logsm.gx": x.grad})
    return out
