"""Training-time replacements for `diffusers.VQModel.quantize`, each exportable as a plain VQModel.

- `VectorQuantizer` (kind: vq): a learned codebook (EMA or gradient), optionally with the rotation trick.
- `FiniteScalarQuantizer` (kind: fsq): a fixed product grid of levels per channel.
- `LookupFreeQuantizer` (kind: lfq): the signs of the channels, with an entropy penalty.

All share `Quantizer` (base.py): diffusers' call signature on `quant_conv`'s output, usage counters and
`codebook()`, the rows `export_vqmodel` writes into `quantize.embedding.weight`.
"""

from ldm_vae.config import MAX_ENUMERATED_CODES
from ldm_vae.metrics.codebook import codebook_usage
from ldm_vae.models.quantizer.base import Quantizer
from ldm_vae.models.quantizer.scalar import FiniteScalarQuantizer, LookupFreeQuantizer
from ldm_vae.models.quantizer.vector import VectorQuantizer, rotate_to_codes

__all__ = [
    "MAX_ENUMERATED_CODES",
    "FiniteScalarQuantizer",
    "LookupFreeQuantizer",
    "Quantizer",
    "VectorQuantizer",
    "codebook_usage",
    "rotate_to_codes",
]
