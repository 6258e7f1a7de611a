"""MIRO: multi-reward conditioned text-to-image pretraining.

Kept import-light on purpose: the torchvision shim (``miro.utils.torchvision_shim``) is imported from a
``.pth`` file at interpreter start on machines that need it, and must not drag torch in with it.
"""

__version__ = "0.1.0"
