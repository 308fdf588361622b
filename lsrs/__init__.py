"""lsrs: latent-space randomized smoothing (LS-RS) and input-space randomized smoothing (IS-RS).

The library a researcher imports; it knows nothing of the ``bench`` command line.
"""

from lsrs.margin import LipschitzCertificates, lipschitz_certify
from lsrs.sequential import Decision
from lsrs.smoothing import ABSTAIN, Certificate, LatentSmooth, Smooth

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN", "Certificate", "Decision", "LatentSmooth", "LipschitzCertificates", "Smooth", "__version__",
    "lipschitz_certify",
]
