"""Wake-sleep (Hinton, Dayan, Frey & Neal 1995) over the same theta and phi trees.

Kingma & Welling 2013 (section 5, figure 2) compare AEVB with wake-sleep on
the same encoder/decoder pair. Wake-sleep has no reparameterisation and no
single objective; each tree follows the gradient of its own phase:

    wake:   theta ascends log p_theta(x, z),       z ~ q_phi(z | x), held fixed
    sleep:  phi   ascends log q_phi(z_d | x_d),    z_d ~ p_theta(z), x_d ~ p_theta(x | z_d)

The sleep phase fits q to the model's own "dreams", i.e. it minimises
KL(p_theta(z|x) || q_phi(z|x)) averaged over the model's x, not over the data:
the mismatch K&W point to. Written here as one surrogate per example whose
gradient w.r.t. theta is the wake gradient and w.r.t. phi the sleep gradient
(stop_gradient separates the phases), so the usual training loop, optimiser
and checkpointing run it unchanged. A tensor tied between encoder and decoder
(stored in phi) gets the sum: the wake gradient of its decoder use plus the
sleep gradient of its encoder use, as untied copies held equal would.
"""

from __future__ import annotations

import jax

from vae_jax.models import LatentVariableModel
from vae_jax.objectives import ObjectiveFn
from vae_jax.schema import Phi, Theta


def make_wake_sleep(model: LatentVariableModel) -> ObjectiveFn:
    """``objective(key, theta, phi, x) -> (surrogate, aux)`` for one example.

    ``surrogate`` = log p_theta(x, sg z) + log q_phi(sg z_d | sg x_d): maximise it.
    Its value is not a bound; ``aux["elbo"]`` is the one-sample ELBO estimate
    log p(x, z) - log q(z | x) at the wake sample, to compare with AEVB.
    """

    def objective(key: jax.Array, theta: Theta, phi: Phi, x: jax.Array):
        wake_key, dream_z_key, dream_x_key = jax.random.split(key, 3)
        stop = jax.lax.stop_gradient
        q_z = model.posterior(phi, x)
        z = stop(q_z.sample(wake_key))
        phi_fixed = stop(phi)
        # The decoder reads phi only for a tied kernel (models.Tying); that use is
        # the generative model's, so it takes the wake gradient. The encoder's use
        # of the same tensor gets the sleep gradient below; z is already stopped.
        log_joint = model.prior(theta, phi_fixed).log_prob(z) + model.likelihood(
            theta, z, phi
        ).log_prob(x)

        theta_fixed = stop(theta)
        z_dream = stop(model.prior(theta_fixed, phi_fixed).sample(dream_z_key))
        x_dream = stop(model.likelihood(theta_fixed, z_dream, phi_fixed).sample(dream_x_key))
        sleep = model.posterior(phi, x_dream).log_prob(z_dream)

        elbo = stop(log_joint - q_z.log_prob(z))
        return log_joint + sleep, {"elbo": elbo, "wake_log_joint": log_joint, "sleep_log_q": sleep}

    return objective
