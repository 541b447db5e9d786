"""Burda, Grosse & Salakhutdinov 2015, section 5, one stochastic layer:
encoder and decoder with two tanh layers of 200, 50 latents, Adam (0.9, 0.999,
eps 1e-4), batch 20, learning rate 1e-3 * 10^(-i/7) for 3^i passes, i = 0..7
(3,280 passes in all); data, split and output-bias start as in the authors' code
(MNIST bytes / 255, 59,600 training images, bias at the train mean's logit).
Their Adam is ``--config.optimizer.name=burda_adam --config.optimizer.b1=0.99
--config.optimizer.schedule=iwae_rounded``. Runs before 2026-12-04 used
``--config.data.intensity=k256 --config.data.split=classic
--config.model.output_bias=zero``. ``objective.name = "elbo"`` is their VAE row; set
``--config.objective.name=iwae --config.objective.num_samples=50`` for IWAE.
Fewer epochs than 3,280 truncate the same schedule."""

from experiments.configs.base import base_config, variant


def get_config(arg: str | None = None):
    config = base_config()
    # The data and start of the authors' released code (yburda/iwae): MNIST at k/255
    # (the default), their 59,600 training and 400 validation images, and p(x|z)'s
    # output bias at the logit of the mean training image.
    config.data.split = "burda"
    config.model.output_bias = "train_mean_logit"
    config.model.hidden_sizes = (200, 200)
    config.model.latent_dim = 50
    config.optimizer.eps = 1e-4
    config.optimizer.schedule = "iwae"
    config.train.batch_size = 20
    config.train.epochs = 3280
    return variant(config, arg)
