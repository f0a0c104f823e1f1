"""How a candidate is scored: accuracy (with early exits), latency on the target hardware
(measured or predicted) and cost (MACs, parameters), behind one ``Evaluator`` interface;
plus the datasets, the runtimes a model can be timed under, and interleaved timing."""

from vitpareto.evaluators._accuracy import AccuracyEvaluator, exit_metrics
from vitpareto.evaluators._base import Evaluator
from vitpareto.evaluators._cost import (
    analytic_macs,
    attn_pool_macs,
    count_macs,
    count_params,
    exit_head_macs,
    exit_macs,
    mac_profile,
)
from vitpareto.evaluators._cost_eval import CostEvaluator
from vitpareto.evaluators._data import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    Data,
    channel_norm,
    load_data,
)
from vitpareto.evaluators._deployed import (
    IMAGES_PER_ROUND,
    ExitPath,
    apportion,
    first_images,
    representative,
    time_deployed,
)
from vitpareto.evaluators._latency import dynamic_latency, expected_latency
from vitpareto.evaluators._latency_eval import LatencyEvaluator
from vitpareto.evaluators._precision import (
    CALIBRATION_IMAGES,
    INT8,
    calibration_images,
    check_precision,
    kept_graph,
    native_half,
    precision_of,
    quantize_onnx,
)
from vitpareto.evaluators._predictor import (
    LatencyPredictor,
    PredictedLatencyEvaluator,
    measure_candidates,
    sample_candidates,
)
from vitpareto.evaluators._runtime import (
    DYNAMIC,
    OPSET,
    RUNTIMES,
    check_onnxscript,
    check_runtime,
    deployed,
    export_onnx,
    export_pt2,
    ort_session,
    prepare,
)
from vitpareto.evaluators._timing import (
    Timing,
    device_fingerprint,
    resolve_device,
    speedup,
    summarize,
    time_interleaved,
)

__all__ = [
    "CALIBRATION_IMAGES",
    "INT8",
    "calibration_images",
    "kept_graph",
    "check_precision",
    "native_half",
    "precision_of",
    "quantize_onnx",
    "DYNAMIC",
    "OPSET",
    "IMAGES_PER_ROUND",
    "apportion",
    "representative",
    "first_images",
    "DEFAULT_MEAN",
    "ExitPath",
    "check_runtime",
    "deployed",
    "export_pt2",
    "ort_session",
    "time_deployed",
    "DEFAULT_STD",
    "channel_norm",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "RUNTIMES",
    "AccuracyEvaluator",
    "CostEvaluator",
    "Data",
    "Evaluator",
    "LatencyEvaluator",
    "LatencyPredictor",
    "PredictedLatencyEvaluator",
    "Timing",
    "analytic_macs",
    "attn_pool_macs",
    "count_macs",
    "count_params",
    "device_fingerprint",
    "dynamic_latency",
    "exit_head_macs",
    "exit_macs",
    "exit_metrics",
    "expected_latency",
    "check_onnxscript",
    "export_onnx",
    "load_data",
    "mac_profile",
    "measure_candidates",
    "prepare",
    "resolve_device",
    "sample_candidates",
    "speedup",
    "summarize",
    "time_interleaved",
]
