r"""Evaluation of frozen representations: classification probes and a MINE estimate of I(X;Y).

*Probes* (``deep_infomax.md``, Tables 1 and 4). The encoder is frozen; features of one level
(conv, fc or Y) are standardised with the training features' mean and standard deviation and a
classifier is trained on them with a fixed schedule (Adam, a fixed number of epochs, fixed
batch size, no early stopping and no model selection on the test set):

* ``"linear"``: ``softmax(W f + b)``, trained by cross-entropy (the linear-separability proxy
  that the source's Table 4 measures with an SVM);
* ``"mlp"``: one hidden layer of 200 ReLU units with dropout (the source's Table 1 classifier).

Reported: top-1 accuracy (a fraction in [0, 1]) on the training features and the test features.

*Few-label probes* (:func:`few_label_probe`). Where pixels are already nearly linearly
separable, a probe trained on all labels hides what a representation adds. The few-label probe
draws ``n`` labelled training images, class-balanced (``n / classes`` per class), and fits an
L2-regularised multinomial logistic regression on their (standardised) features; the
regularisation strength ``C`` is chosen by stratified cross-validation *within the ``n``
labelled images* (the test split is only scored). Repeated over ``draws`` independent draws;
reported are the mean test accuracy, its sample standard deviation over the draws, the values
of every draw and the chosen ``C``.

*MINE estimate* (source Table 4, column ``Î_ρ(X, Y)``). A statistics network
``T(x, y) = ⟨a(x), b(y)⟩`` (MLPs on the flattened pixels and on Y) is trained to maximise the
Donsker–Varadhan bound :math:`\mathbb E_{P}[T] - \log \mathbb E_{Q}[e^T]` with MINE's
moving-average gradient (:class:`ibcore.estimators.mi_bounds.MineEMA`) on pairs ``(x, E(x))`` of
the training images; the estimate is the DV bound (:func:`ibcore.estimators.mi_bounds.dv_bound`)
averaged over batches of held-out images. For a deterministic encoder of continuous inputs the
true I(X;Y) is not finite; the number measures how much dependence this critic can detect in a
fixed budget, so it compares encoders, not absolute information.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.estimators.mi_bounds import MineEMA, dv_bound
from ibcore.validation import check_float, check_int, check_weight

__all__ = [
    "PROBE_KINDS",
    "MineConfig",
    "MineCritic",
    "MineResult",
    "ProbeConfig",
    "ProbeResult",
    "FEW_LABEL_C_GRID",
    "FewLabelResult",
    "accuracy",
    "balanced_draw",
    "extract_features",
    "few_label_probe",
    "make_probe",
    "mine_estimate",
    "standardize",
    "train_probe",
]

PROBE_KINDS: tuple[str, ...] = ("linear", "mlp")


@dataclass(frozen=True)
class ProbeConfig:
    """The fixed training schedule of a probe.

    Adam for ``epochs`` epochs with learning rate ``lr`` (for the MLP probe: ``mlp_epochs`` and
    ``mlp_lr``), decayed to zero along a half cosine when ``cosine`` (per step), on
    mini-batches of ``batch_size``; no early stopping.
    """

    epochs: int = 40
    mlp_epochs: int = 15
    batch_size: int = 256
    lr: float = 1e-2
    mlp_lr: float = 3e-3
    weight_decay: float = 0.0
    hidden: int = 200
    dropout: float = 0.2
    cosine: bool = True

    def __post_init__(self) -> None:
        check_int("probe epochs", self.epochs)
        check_int("probe mlp_epochs", self.mlp_epochs)
        check_int("probe batch_size", self.batch_size)
        check_int("probe hidden", self.hidden)
        check_weight("probe lr", self.lr, low=0.0, low_inclusive=False)
        check_weight("probe mlp_lr", self.mlp_lr, low=0.0, low_inclusive=False)
        check_weight("probe weight_decay", self.weight_decay)
        check_weight("probe dropout", self.dropout, low=0.0, high=1.0, high_inclusive=False)


@dataclass(frozen=True)
class ProbeResult:
    """Top-1 accuracies (fractions) of a trained probe and its per-epoch training loss."""

    kind: str
    train_accuracy: float
    test_accuracy: float
    train_loss: list[float] = field(default_factory=list)
    val_accuracy: float | None = None  # on the validation features, when given


def _check_features(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 1:
        raise ShapeError(
            f"{name} must be a [N, D] tensor of features (flatten feature maps first), got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    return check_float(name, x)


def _check_labels(name: str, y: Tensor, n: int, classes: int) -> Tensor:
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != n:
        raise ShapeError(f"{name} must be a 1-D tensor of {n} class indices, got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ShapeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if n and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise InvalidParameterError(
            f"{name} must lie in [0, {classes - 1}] for classes={classes}, got values in "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    return y.long()


def standardize(train: Tensor, *others: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """Z-score every column with the *training* mean and standard deviation (``std + eps``)."""
    train = _check_features("train features", train)
    mean = train.mean(0, keepdim=True)
    std = train.std(0, unbiased=False, keepdim=True) + eps
    out = [(train - mean) / std]
    for k, x in enumerate(others):
        x = _check_features(f"features {k + 1}", x)
        if x.shape[1] != train.shape[1]:
            raise ShapeError(f"features {k + 1} have {x.shape[1]} columns, the training "
                             f"features {train.shape[1]}")
        out.append((x - mean) / std)
    return tuple(out)


def make_probe(
    kind: str, dim: int, classes: int, config: ProbeConfig, generator: torch.Generator
) -> nn.Module:
    """A linear or 200-unit MLP (ReLU, dropout) classifier, initialised from ``generator``."""
    if kind not in PROBE_KINDS:
        raise UnknownNameError(f"unknown probe {kind!r}; choose one of {', '.join(PROBE_KINDS)}")
    dim, classes = check_int("feature dim", dim), check_int("classes", classes, low=2)
    if kind == "linear":
        layers: list[nn.Module] = [nn.Linear(dim, classes)]
    else:
        layers = [nn.Linear(dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout),
                  nn.Linear(config.hidden, classes)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features**0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=generator) * 2 - 1) * bound)
                m.bias.copy_((torch.rand(m.bias.shape, generator=generator) * 2 - 1) * bound)
    return net


@torch.no_grad()
def accuracy(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch_size: int = 2048
             ) -> float:
    """Top-1 accuracy (fraction) of ``argmax model(x)`` against labels ``y``."""
    if x.shape[0] == 0:
        raise ShapeError("cannot compute the accuracy of an empty set")
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / x.shape[0]


def train_probe(
    kind: str,
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    classes: int,
    config: ProbeConfig,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    val: tuple[Tensor, Tensor] | None = None,
) -> ProbeResult:
    """Train a probe on (already standardised) features with the fixed schedule of ``config``.

    Mini-batch order and dropout masks are drawn from ``generator`` (on the CPU), so the result
    is a pure function of the inputs and the generator's state. ``val`` (features, labels) of a
    validation split carved from the training data is scored too, for choices made on it.
    """
    train_x = _check_features("train_x", train_x)
    test_x = _check_features("test_x", test_x)
    if test_x.shape[1] != train_x.shape[1]:
        raise ShapeError(f"test_x has {test_x.shape[1]} columns, train_x {train_x.shape[1]}")
    classes = check_int("classes", classes, low=2)
    train_y = _check_labels("train_y", train_y, train_x.shape[0], classes)
    test_y = _check_labels("test_y", test_y, test_x.shape[0], classes)
    if val is not None:
        val = (_check_features("val features", val[0]),
               _check_labels("val labels", val[1], val[0].shape[0], classes))
        if val[0].shape[1] != train_x.shape[1]:
            raise ShapeError(f"val features have {val[0].shape[1]} columns, train_x "
                             f"{train_x.shape[1]}")
    device = torch.device(device)
    net = make_probe(kind, train_x.shape[1], classes, config, generator).to(device)
    base_lr = config.lr if kind == "linear" else config.mlp_lr
    opt = torch.optim.Adam(net.parameters(), lr=base_lr, weight_decay=config.weight_decay)
    xs, ys = train_x.to(device), train_y.to(device)
    n = xs.shape[0]
    epochs = config.epochs if kind == "linear" else config.mlp_epochs
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = epochs * steps_per_epoch
    step = 0
    losses: list[float] = []
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=generator).to(device)
        total, steps = 0.0, 0
        for i in range(0, n, config.batch_size):
            idx = perm[i : i + config.batch_size]
            h = xs[idx]
            if kind == "mlp":  # dropout from the explicit generator, not the global RNG
                h = net[1](net[0](h))
                keep = (torch.rand(h.shape, generator=generator) >= config.dropout).to(device)
                h = net[3](h * keep / (1.0 - config.dropout))
            else:
                h = net(h)
            loss = F.cross_entropy(h, ys[idx])
            if config.cosine:
                for group in opt.param_groups:
                    group["lr"] = base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += float(loss.detach())
            steps += 1
        losses.append(total / steps)
    net.eval()
    return ProbeResult(
        kind=kind,
        train_accuracy=accuracy(net, xs, ys),
        test_accuracy=accuracy(net, test_x.to(device), test_y.to(device)),
        train_loss=losses,
        val_accuracy=None if val is None else accuracy(net, val[0].to(device),
                                                        val[1].to(device)),
    )


@dataclass(frozen=True)
class FewLabelResult:
    """Test accuracy of linear probes trained on ``labels`` labelled images (one per draw)."""

    labels: int
    test_accuracy: float  # mean over the draws
    test_accuracy_std: float  # sample standard deviation over the draws (0 for one draw)
    test_accuracies: list[float]
    chosen_c: list[float]
    val_accuracy: float | None = None  # mean over the draws, on the validation features


FEW_LABEL_C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
"""Inverse L2 strengths the cross-validation of :func:`few_label_probe` chooses from."""


def balanced_draw(labels: Tensor, n: int, classes: int, generator: torch.Generator) -> Tensor:
    """Indices of ``n`` items, ``n / classes`` of each class, drawn without replacement."""
    n, classes = check_int("n", n), check_int("classes", classes, low=2)
    if n % classes:
        raise InvalidParameterError(f"{n} labels cannot be split evenly over {classes} classes")
    per = n // classes
    picks = []
    for c in range(classes):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() < per:
            raise InvalidParameterError(
                f"class {c} has {idx.numel()} training images, fewer than the {per} asked for")
        picks.append(idx[torch.randperm(idx.numel(), generator=generator)[:per]])
    return torch.cat(picks)


def few_label_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    labels: int,
    classes: int,
    draws: int,
    generator: torch.Generator,
    folds: int = 3,
    val: tuple[Tensor, Tensor] | None = None,
) -> FewLabelResult:
    """Linear probes trained on ``labels`` class-balanced labelled images (module docstring).

    ``train_x`` are the (standardised) features of the whole unlabelled pool; only the drawn
    rows' labels are used. ``C`` is picked from :data:`FEW_LABEL_C_GRID` by ``folds``-fold
    stratified cross-validation on the drawn images, then the probe is refitted on all of them.
    ``val`` (features, labels of a validation split) is scored too.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    train_x = _check_features("train_x", train_x)
    test_x = _check_features("test_x", test_x)
    classes = check_int("classes", classes, low=2)
    train_y = _check_labels("train_y", train_y, train_x.shape[0], classes)
    test_y = _check_labels("test_y", test_y, test_x.shape[0], classes)
    draws, folds = check_int("draws", draws), check_int("folds", folds, low=2)
    if labels // classes < folds:
        raise InvalidParameterError(
            f"{labels} labels give {labels // classes} per class, fewer than {folds} folds")
    xt = test_x.double().numpy()
    yt = test_y.numpy()
    accs, cs, vals = [], [], []
    for _ in range(draws):
        idx = balanced_draw(train_y, labels, classes, generator)
        x, y = train_x[idx].double().numpy(), train_y[idx].numpy()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        split = StratifiedKFold(folds, shuffle=True, random_state=seed)
        scores = [cross_val_score(LogisticRegression(C=c, max_iter=500), x, y, cv=split).mean()
                  for c in FEW_LABEL_C_GRID]
        best = FEW_LABEL_C_GRID[max(range(len(scores)), key=lambda i: scores[i])]
        clf = LogisticRegression(C=best, max_iter=500).fit(x, y)
        accs.append(float((clf.predict(xt) == yt).mean()))
        cs.append(best)
        if val is not None:
            vals.append(float((clf.predict(val[0].double().numpy()) == val[1].numpy()).mean()))
    mean = sum(accs) / draws
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (draws - 1)) if draws > 1 else 0.0
    return FewLabelResult(labels, mean, std, accs, cs,
                          sum(vals) / len(vals) if vals else None)


@torch.no_grad()
def extract_features(
    encode: Callable[[Tensor], object],
    images: Tensor,
    *,
    levels: Sequence[str] = ("conv", "fc", "y"),
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    transform: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Run a frozen encoder over ``images`` and return ``{level: [N, D] float32 CPU features}``.

    ``encode`` returns an object with one attribute per level (e.g.
    :class:`ibcore.models.dcgan.EncoderOutput`); feature maps are flattened. ``transform``
    maps a batch of stored images to the encoder's input (e.g. uint8 → floats in [−1, 1]).
    The caller puts the encoder in eval mode.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ShapeError(f"images must be [N, C, H, W], got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else images!r}")
    batch_size = check_int("batch_size", batch_size)
    device = torch.device(device)
    out: dict[str, list[Tensor]] = {level: [] for level in levels}
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device)
        if transform is not None:
            x = transform(x)
        feats = encode(x)
        for level in levels:
            if not hasattr(feats, level):
                raise UnknownNameError(f"the encoder output has no feature level {level!r}")
            out[level].append(getattr(feats, level).flatten(1).float().cpu())
    return {level: torch.cat(parts) for level, parts in out.items()}


# ---------------------------------------------------------------------------------------------
# MINE estimate of I(X; Y)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MineConfig:
    """Statistics network and schedule of the MINE estimate."""

    hidden: int = 256
    embed: int = 64
    steps: int = 500
    batch_size: int = 128
    lr: float = 5e-4
    ema_decay: float = 0.99
    eval_batches: int = 10

    def __post_init__(self) -> None:
        for name in ("hidden", "embed", "steps", "eval_batches"):
            check_int(f"mine {name}", getattr(self, name))
        check_int("mine batch_size", self.batch_size, low=2)
        check_weight("mine lr", self.lr, low=0.0, low_inclusive=False)
        check_weight("mine ema_decay", self.ema_decay, low=0.0, high=1.0, high_inclusive=False)


class MineCritic(nn.Module):
    """Separable statistics network ``T(x, y) = ⟨a(x), b(y)⟩``; ``forward`` gives ``[B, B]``."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int, embed: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.x_dim, self.y_dim = check_int("x_dim", x_dim), check_int("y_dim", y_dim)
        self.a = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed))
        self.b = nn.Sequential(nn.Linear(y_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    bound = 1.0 / m.in_features**0.5
                    m.weight.copy_((torch.rand(m.weight.shape, generator=generator) * 2 - 1)
                                   * bound)
                    m.bias.copy_((torch.rand(m.bias.shape, generator=generator) * 2 - 1) * bound)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.a(x.flatten(1)) @ self.b(y).T


@dataclass(frozen=True)
class MineResult:
    """``estimate``: mean held-out DV bound (nats); ``std``: its spread over the eval batches."""

    estimate: float
    std: float
    train_bound: list[float] = field(default_factory=list)


def mine_estimate(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    config: MineConfig,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> MineResult:
    """MINE estimate of ``I(X; Y)`` from paired inputs and codes (see the module docstring).

    ``train_x``/``test_x``: inputs (any shape ``[N, ...]``, flattened); ``train_y``/``test_y``:
    the frozen encoder's codes ``[N, D]`` for the same inputs. Mini-batches are drawn from
    ``generator``. ``train_bound`` holds the training-batch DV value every 50 steps.
    """
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ShapeError("inputs and codes must be paired: equal numbers of rows")
    train_y = _check_features("train_y", train_y)
    test_y = _check_features("test_y", test_y)
    n_train, n_test = train_x.shape[0], test_x.shape[0]
    if n_train < config.batch_size or n_test < config.batch_size:
        raise ShapeError(
            f"MINE needs at least batch_size={config.batch_size} training and test pairs, got "
            f"{n_train} and {n_test}; lower MineConfig.batch_size"
        )
    device = torch.device(device)
    xs, ys = train_x.flatten(1).float().to(device), train_y.to(device)
    critic = MineCritic(xs.shape[1], ys.shape[1], config.hidden, config.embed, generator).to(device)
    opt = torch.optim.Adam(critic.parameters(), lr=config.lr)
    ema = MineEMA(config.ema_decay)
    trace: list[float] = []
    critic.train()
    for step in range(config.steps):
        idx = torch.randperm(n_train, generator=generator)[: config.batch_size].to(device)
        scores = critic(xs[idx], ys[idx])
        loss = ema.loss(scores)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == config.steps - 1:
            trace.append(float(-loss.detach()))
    critic.eval()
    tx, ty = test_x.flatten(1).float(), test_y
    values = []
    with torch.no_grad():
        for _ in range(config.eval_batches):
            idx = torch.randperm(n_test, generator=generator)[: config.batch_size]
            values.append(float(dv_bound(critic(tx[idx].to(device), ty[idx].to(device)))))
    v = torch.tensor(values, dtype=torch.float64)
    std = float(v.std()) if v.numel() > 1 else 0.0
    return MineResult(estimate=float(v.mean()), std=std, train_bound=trace)
