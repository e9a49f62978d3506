"""Neural network models shared by the chapters, one file per family.

* :mod:`ibcore.models.autoencoders`: small MLP or convolutional Gaussian and deterministic
  encoders, Bernoulli and Gaussian decoders, a quantizer with a learned discretized-Gaussian
  prior, and MLP discriminators on the latent code or on the image (the *variational glasses*
  chapter; the VAE and the plain autoencoder are baselines elsewhere).
* :mod:`ibcore.models.dcgan`: the DCGAN-style encoder and the critics of Deep InfoMax.
* :mod:`ibcore.models.gdn` and :mod:`ibcore.models.ncvae`: GDN layers and the NC-VAE codec.
* :mod:`ibcore.models.gmvib`: the Basic / VIB / Gaussian-mixture VIB multi-label classifiers.
* :mod:`ibcore.models.resnet`: small ResNet encoders (and ResNet18) and the ResFC decoder of the
  entropy-estimator chapter.
* :mod:`ibcore.models.init`: initialising a model's weights from an explicit generator.

Submodules are imported on demand (``from ibcore.models.autoencoders import GaussianEncoder``).
"""
