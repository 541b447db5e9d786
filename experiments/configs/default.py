"""`make run`: the appendix-C VAE sized to finish in about 10 minutes on 2 CPU cores.

Kingma & Welling's architecture (Gaussian MLP encoder, Bernoulli MLP decoder,
one tanh layer each) with 200 hidden units instead of 500 and 20 latents,
trained with Adam at batch 100 on dynamically binarised MNIST, and scored with
IS-5000 on all 10,000 test images.
"""

from experiments.configs.base import base_config, variant


def get_config(arg: str | None = None):
    config = base_config()
    config.model.hidden_sizes = (200,)
    config.model.latent_dim = 20
    config.train.epochs = 30
    config.train.batch_size = 100
    return variant(config, arg)
