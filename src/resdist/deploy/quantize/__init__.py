"""INT8 deployment: static post-training quantisation with ONNX Runtime's own tool.

:func:`quantize_onnx` (:mod:`.static`) takes an fp32 ONNX model (as written by
:func:`~resdist.deploy.export_onnx`) through ``onnxruntime.quantization``: its model
pre-processing step (``quant_pre_process``: shape inference and graph clean-up), then
``quantize_static`` in QDQ format with per-channel signed INT8 weights and unsigned INT8
activations whose ranges are calibrated (MinMax) on the batches a
:class:`~onnxruntime.quantization.CalibrationDataReader` (or any iterable of arrays) yields.
:func:`calibration_batches` (:mod:`.calibration`) draws those batches from a resdist data set's
training split with the training preprocessing but no random augmentation, so nothing of the
test set is seen. :func:`quantize_checkpoint` (:mod:`.checkpoint`) is the whole path from a
checkpoint; :func:`export_int8` takes the same calibration images through another runtime's
own quantiser (NNCF for OpenVINO, PT2E with the XNNPACK or LiteRT quantiser).

Activations are ``QUInt8`` (U8S8), not the tool's default ``QInt8``: ONNX Runtime's CPU
provider (1.32) turns a QDQ ``Add`` into ``QLinearAdd`` only for uint8, so with int8
activations every shortcut ``Add`` of a ResNet, and the convolution feeding it, stays in fp32
(ResNet-18: 11 of 20 convolutions), which would make the INT8 ResNet look slow for a reason
that has nothing to do with shortcuts. With uint8 every convolution becomes ``QLinearConv``.
On x86 CPUs without VNNI, U8S8 can saturate: a ResNet-8 lost 5 points on an AVX2-only CPU and
none with ``reduce_range=True`` (7-bit weights), which :func:`quantize_checkpoint` takes and its
report's ``notes`` suggest when the INT8 model agrees poorly with fp32 on such a CPU.
"""

from .calibration import (
    DEFAULT_CALIBRATION_IMAGES,
    calibration_batches,
    calibration_for,
    gaussian_batches,
)
from .checkpoint import Int8Export, export_int8, quantize_checkpoint
from .static import DATA_METADATA_KEY, QuantizeReport, count_qdq, quantize_onnx

__all__ = [
    "DATA_METADATA_KEY", "DEFAULT_CALIBRATION_IMAGES", "Int8Export", "QuantizeReport",
    "calibration_batches", "calibration_for", "count_qdq", "export_int8", "gaussian_batches",
    "quantize_checkpoint", "quantize_onnx",
]
