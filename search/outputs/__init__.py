"""What a search leaves behind: queries of the results database, the report, and the
front exported as standalone models."""

from vitpareto.search.outputs._bench import (
    bench_dirs,
    check_dirs,
    disagreement,
    format_bench,
    full_model,
    measure_deployed,
)
from vitpareto.search.outputs._export import (
    build_model,
    export_trials,
    model_card,
    pick_trials,
)
from vitpareto.search.outputs._expr import ExpressionError, names, parse_sort, parse_where
from vitpareto.search.outputs._modeldir import (
    check_writable,
    load_model,
    model_files,
    read_config,
    rebuild,
    save_finetuned,
    write_model_dir,
)
from vitpareto.search.outputs._portable import portable_files
from vitpareto.search.outputs._query import (
    MAIN_COLUMNS,
    completed_trials,
    format_front,
    load_trials,
    select,
    trials_frame,
)
from vitpareto.search.outputs._report import knob_summary, write_report
from vitpareto.search.outputs._showcase import format_table, measure, showcase

__all__ = [
    "MAIN_COLUMNS",
    "ExpressionError",
    "bench_dirs",
    "disagreement",
    "measure_deployed",
    "build_model",
    "check_dirs",
    "format_bench",
    "full_model",
    "check_writable",
    "completed_trials",
    "export_trials",
    "format_front",
    "format_table",
    "knob_summary",
    "load_model",
    "load_trials",
    "measure",
    "model_card",
    "model_files",
    "names",
    "parse_sort",
    "parse_where",
    "pick_trials",
    "portable_files",
    "read_config",
    "rebuild",
    "save_finetuned",
    "select",
    "showcase",
    "trials_frame",
    "write_model_dir",
    "write_report",
]
