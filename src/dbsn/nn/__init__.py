"""Networks: centre-masked convolutions, the D-BSN, its heads, and a registry."""

from .bsn import DBSN
from .heads import NoiseEstimator, VarMuHead
from .masked import CentreMaskedConv2d
from .registry import create_model, list_models, register_model
from .blind_spot import DBSNModel
from .students import MWCNN, UNetSmall, haar_dwt, haar_iwt

__all__ = [
    "CentreMaskedConv2d",
    "DBSN",
    "DBSNModel",
    "MWCNN",
    "UNetSmall",
    "NoiseEstimator",
    "VarMuHead",
    "create_model",
    "haar_dwt",
    "haar_iwt",
    "list_models",
    "register_model",
]
