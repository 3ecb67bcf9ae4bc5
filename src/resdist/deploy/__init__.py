"""Deploy without shortcuts: fold, export and profile (docs/method.md section 7).

- :func:`to_deploy` folds Dirac kernels and BatchNorm into the convolutions;
  :func:`calibrate_bn` gives randomly initialised networks sane BatchNorm statistics.
- :func:`export` / :func:`export_onnx` / :func:`export_torchscript` write the deploy form with
  its input contract (:func:`read_contract` reads it back; :func:`with_preprocessing` bakes the
  normalisation in); :func:`predict` classifies image files as the contract says;
  :func:`count_feature_adds` counts the shortcut additions left in an ONNX graph and
  :func:`verify_onnx` checks it against PyTorch with ONNX Runtime; :func:`evaluate_file`
  scores any checkpoint, export or state dict on a data set (``resdist eval``).
- :func:`analyze_onnx` computes peak live activation memory, bytes moved and MACs by a
  liveness pass; :func:`profile_models` adds ONNX Runtime latency and ResNet/plain ratios
  (a :class:`ProfileResult`); :func:`write_profile_report` writes JSON, a PNG chart and
  markdown.
- :mod:`resdist.deploy.quantize` quantises to INT8 (ONNX Runtime's static QDQ tool);
  :mod:`resdist.deploy.profile` times the INT8 models beside fp32.

ONNX features need the ``onnx`` extra: ``pip install 'resdist[onnx]'``.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "..models.fold": ("calibrate_bn", "fold_batchnorms", "fuse_conv_bn", "to_deploy"),
    ".errors": ("DeployError", "MissingDependencyError"),
    ".evaluate": ("evaluate_file",),
    ".exporter": ("ExportReport", "count_feature_adds", "count_torchscript_feature_adds", "export",
        "export_onnx", "export_torchscript", "read_contract", "verify_onnx", "verify_torchscript",
        "with_preprocessing"),
    ".predictor": ("Predictor", "predict"),
    ".profile": ("GraphProfile", "ProfileResult", "analyze_onnx", "format_table",
        "measure_latency", "memory_cross_check", "merge_profiles", "profile_models",
        "torch_activation_peak", "write_profile_report"),
}

__all__ = [
    "DeployError", "ExportReport", "GraphProfile", "MissingDependencyError", "Predictor",
    "ProfileResult", "analyze_onnx", "calibrate_bn", "count_feature_adds",
    "count_torchscript_feature_adds", "evaluate_file", "export", "export_onnx",
    "export_torchscript", "fold_batchnorms", "format_table", "fuse_conv_bn", "measure_latency",
    "memory_cross_check", "merge_profiles", "predict", "profile_models", "read_contract",
    "to_deploy", "torch_activation_peak", "verify_onnx", "verify_torchscript",
    "with_preprocessing", "write_profile_report",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers; at run time each name is imported on first use
    from ..models.fold import calibrate_bn, fold_batchnorms, fuse_conv_bn, to_deploy
    from .errors import DeployError, MissingDependencyError
    from .evaluate import evaluate_file
    from .exporter import (
        ExportReport,
        count_feature_adds,
        count_torchscript_feature_adds,
        export,
        export_onnx,
        export_torchscript,
        read_contract,
        verify_onnx,
        verify_torchscript,
        with_preprocessing,
    )
    from .predictor import Predictor, predict
    from .profile import (
        GraphProfile,
        ProfileResult,
        analyze_onnx,
        format_table,
        measure_latency,
        memory_cross_check,
        merge_profiles,
        profile_models,
        torch_activation_peak,
        write_profile_report,
    )
