"""Neural network models shared by the chapters, one file per family.

* :mod:`ibcore.models.autoencoders`: small MLP or convolutional Gaussian and deterministic
  encoders, Bernoulli and Gaussian decoders, a quantizer with a learned discretized-Gaussian
  prior, and MLP discriminators on the latent code or on the image (the *variational glasses*
  chapter; the VAE and the plain autoencoder are baselines elsewhere).
* :mod:`ibcore.models.dcgan`: the DCGAN-style encoder and the critics of Deep InfoMax.

Submodules are imported on demand (``from ibcore.models.autoencoders import GaussianEncoder``).
"""
