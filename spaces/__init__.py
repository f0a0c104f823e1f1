"""What can be searched: the Candidate, the JointSpace, the elastic ViT and ``compress``."""

from vitpareto.spaces._candidate import Candidate
from vitpareto.spaces._compress import CompressedViT, compress
from vitpareto.spaces._elastic import ElasticViT
from vitpareto.spaces._errors import VitParetoError
from vitpareto.spaces._importance import CRITERIA, BlockScores, rank
from vitpareto.spaces._models import create_model, load_checkpoint
from vitpareto.spaces._ops import kept_tokens
from vitpareto.spaces._space import JointSpace, Knob
from vitpareto.spaces._spec import ViTSpec, describe

__all__ = [
    "CRITERIA",
    "BlockScores",
    "Candidate",
    "CompressedViT",
    "ElasticViT",
    "JointSpace",
    "Knob",
    "ViTSpec",
    "VitParetoError",
    "compress",
    "create_model",
    "load_checkpoint",
    "describe",
    "kept_tokens",
    "rank",
]
