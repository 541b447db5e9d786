"""PyTorch CPU reference for `make bench`: the 784-400-20 MLP VAE at batch 128,
trained the way PyTorch's well-known `examples/vae` trains it (ReLU MLP, BCE
with sum reduction plus the analytic KL, Adam 1e-3, a shuffling DataLoader).

Runs in its own venv (.venv-torch, torch==2.13.0, made by `make install-torch`);
torch is not a project dependency. experiments/bench.py starts it with
``python -I`` (isolated mode) so that no file of ours is importable here, and
drives it over stdin so that its epochs interleave with vae_jax's: each line
"epoch" runs one epoch and prints {"seconds": ..., "loss": ...} as JSON.
"""

import json
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def loss_function(recon, x, mu, logvar):
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def main():
    x_train = torch.from_numpy(np.load(sys.argv[1]))
    torch.manual_seed(0)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x_train), batch_size=128, shuffle=True)
    print(
        json.dumps({"ready": True, "threads": torch.get_num_threads(), "torch": torch.__version__})
    )
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip() != "epoch":
            break
        model.train()
        start, total = time.perf_counter(), 0.0
        for (x,) in loader:
            optimizer.zero_grad()
            recon, mu, logvar = model(x)
            loss = loss_function(recon, x, mu, logvar)
            loss.backward()
            total += loss.item()
            optimizer.step()
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "loss": total / len(x_train)}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
