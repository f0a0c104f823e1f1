"""How a candidate is scored: accuracy (with early exits), latency on the target hardware
(measured or predicted) and cost (MACs, parameters), behind one ``Evaluator`` interface."""

from vitpareto.evaluators._accuracy import AccuracyEvaluator, exit_metrics
from vitpareto.evaluators._base import Evaluator
from vitpareto.evaluators._cost import (
    analytic_macs,
    count_macs,
    count_params,
    exit_head_macs,
    exit_macs,
    mac_profile,
)
from vitpareto.evaluators._cost_eval import CostEvaluator
from vitpareto.evaluators._data import FASHION_MNIST_DIR, Data, load_data
from vitpareto.evaluators._latency import (
    LatencyEvaluator,
    Measurement,
    dynamic_latency,
    expected_latency,
    measure_pair,
)
from vitpareto.evaluators._predictor import LatencyPredictor, PredictedLatencyEvaluator
from vitpareto.evaluators._runtime import RUNTIMES, export_onnx, prepare
from vitpareto.evaluators._timing import (
    Timing,
    device_fingerprint,
    resolve_device,
    time_interleaved,
)

__all__ = [
    "RUNTIMES",
    "AccuracyEvaluator",
    "CostEvaluator",
    "Data",
    "FASHION_MNIST_DIR",
    "Evaluator",
    "LatencyEvaluator",
    "LatencyPredictor",
    "Measurement",
    "PredictedLatencyEvaluator",
    "Timing",
    "analytic_macs",
    "count_macs",
    "count_params",
    "device_fingerprint",
    "dynamic_latency",
    "exit_head_macs",
    "exit_macs",
    "expected_latency",
    "exit_metrics",
    "export_onnx",
    "load_data",
    "mac_profile",
    "measure_pair",
    "prepare",
    "resolve_device",
    "time_interleaved",
]
