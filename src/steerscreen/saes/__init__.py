"""SAEs: SAELens v6 objects plus steerscreen's glue (specs, saving, input conventions, pairing).

``io`` (loading, saving, encoding) and ``pairing`` (SAE vs model and hook) are re-exported here;
training lives in its own module (``steerscreen.saes.training``), imported explicitly by whoever
needs it so that this package stays cheap to import.
"""

from steerscreen.saes.io import (
    SCHEMES,
    LoadedSAE,
    SAEInput,
    check_sae_spec,
    decoder_directions,
    encode,
    from_saelens,
    load_sae,
    save_sae,
)
from steerscreen.saes.pairing import ModelLike, canonical_model_name, validate_pairing

__all__ = [
    "SCHEMES",
    "LoadedSAE",
    "ModelLike",
    "SAEInput",
    "canonical_model_name",
    "check_sae_spec",
    "decoder_directions",
    "encode",
    "from_saelens",
    "load_sae",
    "save_sae",
    "validate_pairing",
]
