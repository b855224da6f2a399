"""PyTorch 1.13 reference for the optimizers and learning-rate schedules (tests/test_optim.cpp).

Optimizer trajectories: four parameters in two groups ("body", "head") with different learning rates and weight
decays; p1 is frozen (requires_grad=False, so its grad stays None); p3 gets no gradient for the first 3 steps
(grad None: skipped, no state). 10 steps on a fixed gradient sequence, in float32 and float64, single-tensor
implementation (foreach=False). Stored per config and dtype: <cfg>.<dt>.init.p<k>, .grad<s>.p<k> (the gradient
given at step s, only where there is one) and .after<s>.p<k> (parameters after step s).
The hyper-parameters below are repeated in tests/test_optim.cpp (kConfigs); keep both in step.

Schedules: the lr of two groups (base 0.1 and 0.01) in epochs 0..29, i.e. after e calls of scheduler.step():
sched.<name> has shape (30, 2).
"""
import torch

STEPS = 10
SHAPES = [(5, 3), (4,), (3, 5), (3,)]  # p0 body, p1 body frozen, p2 head, p3 head (no grad before step 3)
FROZEN = 1
LATE, LATE_FROM = 3, 3

# name: (class, defaults, body overrides, head overrides)
CONFIGS = {
    "sgd_momentum": (torch.optim.SGD, dict(lr=0.05, momentum=0.9), dict(lr=0.01), dict(lr=0.1)),
    "sgd_nesterov_wd": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
                        dict(lr=0.01), dict(lr=0.1, weight_decay=5e-4)),
    "sgd_dampening": (torch.optim.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-3),
                      dict(lr=0.02), dict()),
    "adamw": (torch.optim.AdamW, dict(lr=1e-3), dict(weight_decay=1e-2), dict(lr=1e-2, weight_decay=0.1)),
    "adam_wd": (torch.optim.Adam, dict(lr=1e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
                dict(), dict(lr=5e-3, weight_decay=0.05)),
    "adamw_amsgrad": (torch.optim.AdamW, dict(lr=2e-3, amsgrad=True), dict(), dict(lr=1e-2, betas=(0.5, 0.9))),
}


def trajectory(name, dtype):
    cls, defaults, body, head = CONFIGS[name]
    g = torch.Generator().manual_seed(1234)
    init = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES] for _ in range(STEPS)]
    params = [p.clone().requires_grad_(k != FROZEN) for k, p in enumerate(init)]
    opt = cls([dict(params=[params[0], params[1]], **body), dict(params=[params[2], params[3]], **head)],
              foreach=False, **defaults)
    out = {}
    prefix = f"{name}.{'f32' if dtype == torch.float32 else 'f64'}"
    for k, p in enumerate(init):
        out[f"{prefix}.init.p{k}"] = p
    for s in range(STEPS):
        opt.zero_grad(set_to_none=True)
        for k, p in enumerate(params):
            if k == FROZEN or (k == LATE and s < LATE_FROM):
                continue
            p.grad = grads[s][k].clone()
            out[f"{prefix}.grad{s}.p{k}"] = grads[s][k]
        opt.step()
        for k, p in enumerate(params):
            out[f"{prefix}.after{s}.p{k}"] = p.detach().clone()
    return out


SCHEDULES = {
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.1),
    "multistep": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[5, 12, 12, 20], gamma=0.5),
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-4),
    "cosine_long": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=40, eta_min=0.0),
}


def schedule(name):
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([dict(params=[a], lr=0.1), dict(params=[b], lr=0.01)], lr=0.1, momentum=0.9)
    sched = SCHEDULES[name](opt)
    lrs = []
    for _ in range(30):
        lrs.append([grp["lr"] for grp in opt.param_groups])
        opt.step()
        sched.step()
    return torch.tensor(lrs, dtype=torch.float64)


def build():
    out = {}
    for name in CONFIGS:
        for dtype in (torch.float32, torch.float64):
            out.update(trajectory(name, dtype))
    for name in SCHEDULES:
        out[f"sched.{name}"] = schedule(name)
    return out
