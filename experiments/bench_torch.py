"""PyTorch CPU references for `make bench`, in two styles for two models.

Models (``--model``):
  * ``vae400``: the 784-400-20 ReLU MLP VAE of PyTorch's ``examples/vae``, batch 128,
    grey values as targets, Adam 1e-3, the loss summed over the batch.
  * ``iwae``: the IWAE table's step (iwae_1layer.py): 784-200-200-50 tanh encoder and
    decoder, batch 20, dynamic binarisation (a fresh Bernoulli draw of every batch),
    Adam 1e-3 with eps 1e-4, the loss averaged over the batch. ``--k 1`` is the VAE's
    ELBO with the analytic KL; ``--k K`` > 1 the IWAE bound over K samples.

Loops (``--loop``):
  * ``examples``: as ``examples/vae`` writes it: a shuffling ``DataLoader`` over a
    ``TensorDataset``, the decoder's ``sigmoid`` then ``binary_cross_entropy``, and
    ``loss.item()`` after every step.
  * ``fast``: the fastest idiomatic loop measured on this CPU (docs/performance.md):
    the examples loop with each of ``CHANGES`` (index batches from one ``randperm``,
    the fused with-logits loss, one host read per epoch, ``Adam(fused=True)``);
    ``--compile`` adds ``torch.compile`` of the step, ``--threads`` sets torch's.

Runs in its own venv (.venv-torch, torch==2.13.0, made by `make install-torch`);
torch is not a project dependency. experiments/bench.py starts it with
``python -I`` (isolated mode) so that no file of ours is importable here, and
drives it over stdin so that its epochs interleave with vae_jax's: each line
"epoch" runs one epoch and prints {"seconds": ..., "loss": ...} as JSON.
``--standalone N`` instead runs N epochs back to back, the way a user times a loop,
and prints one such line per epoch.
"""

import argparse
import json
import math
import sys
import time
from itertools import pairwise

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

MODELS = {
    # name: (hidden widths, latent, activation, batch, dynamic binarisation, Adam eps)
    "vae400": ((400,), 20, F.relu, 128, False, 1e-8),
    "iwae": ((200, 200), 50, torch.tanh, 20, True, 1e-4),
}
LOOPS = ("examples", "fast")  # fast: the examples loop with every one of CHANGES
LOG_2PI = math.log(2 * math.pi)


def mlp(sizes):
    return nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))


class VAE(nn.Module):
    """Gaussian MLP encoder, Bernoulli MLP decoder; ``forward`` returns the decoder's
    logits ([B, 784], or [K, B, 784] for k > 1) and q's (mu, logvar, z)."""

    def __init__(self, hidden, latent, activation):
        super().__init__()
        self.activation = activation
        self.encoder = mlp((784, *hidden))
        self.mu = nn.Linear(hidden[-1], latent)
        self.logvar = nn.Linear(hidden[-1], latent)
        self.decoder = mlp((latent, *reversed(hidden)))
        self.out = nn.Linear(hidden[0], 784)

    def forward(self, x, k):
        h = x
        for layer in self.encoder:
            h = self.activation(layer(h))
        mu, logvar = self.mu(h), self.logvar(h)
        eps = torch.randn_like(mu) if k == 1 else torch.randn((k, *mu.shape))
        z = mu + eps * torch.exp(0.5 * logvar)
        h = z
        for layer in self.decoder:
            h = self.activation(layer(h))
        return self.out(h), mu, logvar, z


def loss_fn(model, x, k, reduction, fused):
    """The negative bound of a batch, summed (``examples/vae``) or averaged over it."""
    logits, mu, logvar, z = model(x, k)
    if k == 1:  # the ELBO with the analytic KL, as examples/vae writes it
        if fused:
            bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        else:
            bce = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        return loss if reduction == "sum" else loss / x.shape[0]
    # The IWAE bound: log mean_k p(x, z_k) / q(z_k | x), per example.
    x = x.expand_as(logits)
    if fused:
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    else:
        nll = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(-1)
    log_p_z = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    log_q_z = -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + LOG_2PI).sum(-1)
    log_w = -nll + log_p_z - log_q_z  # [K, B]
    per_example = -(torch.logsumexp(log_w, 0) - math.log(k))
    return per_example.sum() if reduction == "sum" else per_example.mean()


# What the fast loop changes in the examples loop; ``--loop examples --change NAME``
# measures one change alone, ``--loop fast --change NAME`` the fast loop without it.
CHANGES = {
    "index_batches": "one randperm per epoch, index batches cut from it (no DataLoader)",
    "fused_loss": "binary_cross_entropy_with_logits on the logits (no sigmoid, then BCE)",
    "one_sync": "the epoch's loss summed as a tensor and read once (no loss.item() per step)",
    "fused_adam": "Adam(fused=True) (not the default for-loop implementation on CPU)",
}


class Trainer:
    def __init__(self, x_train, model_name, changes, k, compile_step):
        hidden, latent, activation, batch, self.dynamic, eps = MODELS[model_name]
        self.x, self.batch, self.k, self.changes = x_train, batch, k, frozenset(changes)
        self.reduction = "sum" if model_name == "vae400" else "mean"
        torch.manual_seed(0)
        self.model = VAE(hidden, latent, activation)
        fused = "fused_adam" in self.changes
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, eps=eps, fused=fused)
        self.loader = DataLoader(TensorDataset(x_train), batch_size=batch, shuffle=True)
        self.step = torch.compile(self._step) if compile_step else self._step

    def _step(self, x):
        self.optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(self.model, x, self.k, self.reduction, "fused_loss" in self.changes)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _batches(self):
        if "index_batches" not in self.changes:
            for (x,) in self.loader:
                yield x
            return
        order = torch.randperm(self.x.shape[0])
        steps = self.x.shape[0] // self.batch  # the last partial batch dropped, as vae_jax
        for i in range(steps):
            yield self.x[order[i * self.batch : (i + 1) * self.batch]]

    def epoch(self) -> float:
        """One pass over the data; returns the mean loss per example (for the mean
        reduction, the mean of the batches' means: exact where the batch divides N)."""
        one_sync = "one_sync" in self.changes
        total, steps, examples = (torch.zeros(()) if one_sync else 0.0), 0, 0
        for x in self._batches():
            loss = self.step(torch.bernoulli(x) if self.dynamic else x)
            total += loss if one_sync else loss.item()
            steps, examples = steps + 1, examples + x.shape[0]
        return float(total) / (examples if self.reduction == "sum" else steps)


def timed(trainer) -> dict:
    start = time.perf_counter()
    loss = trainer.epoch()
    return {"seconds": time.perf_counter() - start, "loss": loss}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="training images, a float32 .npy of shape [N, 784]")
    parser.add_argument("--model", choices=sorted(MODELS), default="vae400")
    parser.add_argument("--loop", choices=LOOPS, default="examples")
    parser.add_argument("--k", type=int, default=1, help="samples per image (iwae only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step")
    parser.add_argument(
        "--change",
        choices=sorted(CHANGES),
        action="append",
        default=[],
        help="toggle one of the fast loop's changes (repeatable)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads")
    parser.add_argument("--standalone", type=int, default=0, help="run N epochs, no stdin")
    args = parser.parse_args()
    if args.k != 1 and args.model != "iwae":
        parser.error(f"--k {args.k}: only the iwae model draws more than one sample")
    x_train = torch.from_numpy(np.load(args.data))
    if args.threads:
        torch.set_num_threads(args.threads)
    changes = set(CHANGES) if args.loop == "fast" else set()
    changes ^= set(args.change)
    trainer = Trainer(x_train, args.model, changes, args.k, args.compile)
    info = {"ready": True, "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(info), flush=True)
    if args.standalone:
        for _ in range(args.standalone):
            print(json.dumps(timed(trainer)), flush=True)
        return
    for line in sys.stdin:
        if line.strip() != "epoch":
            break
        print(json.dumps(timed(trainer)), flush=True)


if __name__ == "__main__":
    main()
