"""Training objectives, one module per family, each assembling its terms with the signs and
weights of its source document.

* :mod:`ibcore.objectives.bibae`: the bounded information bottleneck autoencoder (BIB-AE) of
  ``variational_glasses.md`` and its special cases (VAE, β-VAE, AAE, InfoVAE, GAN, VAE/GAN,
  Shannon and generative-compression AEs) as choices of the four terms A, B, C, D.
* :mod:`ibcore.objectives.infomax`: Deep InfoMax's global and local MI objectives and its
  prior-matching term, on top of the bounds in :mod:`ibcore.estimators.mi_bounds`.
* :mod:`ibcore.objectives.entropy_ib`: Kirsch, Lyle & Gal's eq. 10,
  H[Z|Y] + (β'' − 1) H[Z] with kNN entropy estimates and zero-entropy noise.
* :mod:`ibcore.objectives.gmvib`: the Basic, VIB and Gaussian-mixture VIB objectives of
  ``gmvib.md`` (multi-label cross-entropy plus β times the Gaussian/Dirichlet rate).

Submodules are imported on demand (``from ibcore.objectives.bibae import lagrangian``).
"""
