"""ibcore: objectives, estimators, models, data, training and results for the ibbook textbook.

Submodules are imported on demand (``import ibcore.estimators``), so ``import ibcore`` stays light.
"""

__version__ = "0.1.0"
