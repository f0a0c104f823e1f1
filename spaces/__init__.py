"""What can be searched: the Candidate, the JointSpace, the elastic ViT and ``compress``,
and the modules a compressed model is made of."""

from vitpareto.errors import VitParetoError
from vitpareto.spaces._adapters import ADAPTERS, adapt
from vitpareto.spaces._branches import (
    EXIT_TYPES,
    AttentionExit,
    ConvExit,
    MlpExit,
    exit_key,
    key_design,
)
from vitpareto.spaces._candidate import HALF, PRECISIONS, Candidate
from vitpareto.spaces._compress import FLOATS, CompressedViT, DeployedViT, PrunedBlock
from vitpareto.spaces._criteria import BlockScores
from vitpareto.spaces._elastic import ElasticViT, compress
from vitpareto.spaces._eva import canonical as canonical_eva
from vitpareto.spaces._exits import exit_assignment
from vitpareto.spaces._importance import (
    CALIBRATION_BATCHES,
    CRITERIA,
    importance_scores,
    needs_data,
    rank,
)
from vitpareto.spaces._models import (
    check_recipe,
    create_model,
    load_checkpoint,
    load_state,
    read_torch,
    weights_sha256,
)
from vitpareto.spaces._ops import ExitHead
from vitpareto.spaces._rope import TokenRope, grid_positions, pair_order, pair_table
from vitpareto.spaces._space import JointSpace, Knob
from vitpareto.spaces._spec import NORM_MACS, ViTSpec, describe, norm_kind
from vitpareto.spaces._tokens import (
    TOKEN_MODES,
    ClassAttention,
    MergeMetric,
    TokenMerge,
    TokenSelect,
    kept_tokens,
    merge_macs,
    merge_tokens,
    reduces,
    select_tokens,
    sized_blocks,
    token_counts,
)

__all__ = [
    "CALIBRATION_BATCHES",
    "CRITERIA",
    "ClassAttention",
    "DeployedViT",
    "ExitHead",
    "EXIT_TYPES",
    "PRECISIONS",
    "HALF",
    "FLOATS",
    "MlpExit",
    "AttentionExit",
    "ConvExit",
    "exit_key",
    "key_design",
    "PrunedBlock",
    "TokenSelect",
    "TokenRope",
    "grid_positions",
    "pair_order",
    "pair_table",
    "TokenMerge",
    "MergeMetric",
    "TOKEN_MODES",
    "merge_macs",
    "merge_tokens",
    "select_tokens",
    "reduces",
    "sized_blocks",
    "exit_assignment",
    "canonical_eva",
    "ADAPTERS",
    "adapt",
    "token_counts",
    "BlockScores",
    "Candidate",
    "CompressedViT",
    "ElasticViT",
    "JointSpace",
    "Knob",
    "ViTSpec",
    "NORM_MACS",
    "norm_kind",
    "VitParetoError",
    "compress",
    "check_recipe",
    "create_model",
    "load_checkpoint",
    "load_state",
    "read_torch",
    "weights_sha256",
    "describe",
    "kept_tokens",
    "rank",
    "importance_scores",
    "needs_data",
]
