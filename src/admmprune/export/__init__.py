"""Export of pruned models: a compressed container (sparse positions + float or k-means
quantized values, zstd, checksum, no pickle), dense safetensors, ONNX; the size report.

    from admmprune.export import save_compressed
    save_compressed(model, "model.apz", bits=4, model_name="lenet5")
    model = admmprune.load("model.apz")          # an ordinary nn.Module
"""

from .container import FORMAT_VERSION, ContainerError, read_container, write_container
from .formats import (
    BITS,
    ExportError,
    load,
    load_state_dict,
    read_manifest,
    save_compressed,
    save_dense,
    save_onnx,
)
from .size import format_size_report, size_report

__all__ = ["save_compressed", "save_dense", "save_onnx", "load", "load_state_dict",
           "read_manifest", "size_report", "format_size_report", "ExportError",
           "ContainerError", "FORMAT_VERSION", "BITS", "read_container", "write_container"]
