"""Burda, Grosse & Salakhutdinov 2015, section 5, two stochastic layers, as in the
authors' released code: q is x -> tanh 200-200 -> z1 (100) -> tanh 100-100 -> z2 (50),
p is z2 -> tanh 100-100 -> z1 -> tanh 200-200 -> x (Bernoulli); p(z2) = N(0, I).
Adam (0.9, 0.999, eps 1e-4), batch 20, the 3,280-pass schedule, data, split and
output-bias start of iwae_1layer.py.
``objective.name = "elbo"`` is their VAE row; IWAE is
``--config.objective.name=iwae --config.objective.num_samples=5`` (add
``--config.objective.gradient=dreg`` for the doubly reparameterised gradient).
Fewer epochs than 3,280 truncate the same schedule. No latent-space plots (they
are drawn for one layer of latents)."""

from experiments.configs.base import base_config, variant


def get_config(arg: str | None = None):
    config = base_config()
    # The data and start of the authors' released code (yburda/iwae): MNIST at k/255
    # (the default), their 59,600 training and 400 validation images, and p(x|z)'s
    # output bias at the logit of the mean training image.
    config.data.split = "burda"
    config.model.output_bias = "train_mean_logit"
    config.model.hidden_sizes = (200, 200)
    config.model.latent_dim = 100
    config.model.top_latent_dim = 50
    config.model.top_hidden_sizes = (100, 100)
    config.optimizer.eps = 1e-4
    config.optimizer.schedule = "iwae"
    config.train.batch_size = 20
    config.train.epochs = 3280
    config.eval.plots = False
    return variant(config, arg)
