"""Kingma & Welling 2013, section 5 and appendix C: MNIST, one tanh hidden
layer of 500 in encoder and decoder, minibatch 100, one sample per datapoint,
Adagrad (the paper's optimiser; its step size here is ours)."""

from experiments.configs.base import base_config, variant


def get_config(arg: str | None = None):
    config = base_config()
    config.model.hidden_sizes = (500,)
    config.model.latent_dim = 20
    config.optimizer.name = "adagrad"
    config.optimizer.learning_rate = 0.02
    config.train.batch_size = 100
    config.train.epochs = 100
    return variant(config, arg)
