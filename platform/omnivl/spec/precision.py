"""The inference `precision` field of the configs that run a trained model (embed, evaluate, serve): its names,
its description and the rule that fp16 needs a GPU. Torch-free, as specs validate offline;
`omnivl.models.precision.autocast` is where a precision name becomes an autocast context.

    precision: UseGpuPrecision = precision_field("use_gpu: true")   # on a config whose `use_gpu` is declared first
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

from pydantic import AfterValidator, Field, ValidationInfo

Precision = Literal["fp32", "bf16", "fp16"]
DEFAULT_PRECISION = "fp32"


def fp16_on_gpu(gpu_setting: str, on_gpu: Callable[[dict[str, Any]], bool]) -> AfterValidator:
    """A validator of a `precision` field refusing fp16 unless `on_gpu(fields validated so far)` holds. The
    settings `on_gpu` reads must be declared before `precision` (pydantic validates fields in order), so that
    the error lands on `<config>.precision`; its message names `gpu_setting`, what puts the model on a GPU."""

    def check(precision: str, info: ValidationInfo) -> str:
        if precision == "fp16" and not on_gpu(info.data):
            raise ValueError(f"fp16 needs {gpu_setting} (CPUs run fp16 matmuls slowly or not at all); "
                             "use bf16 or fp32 on CPU")
        return precision

    return AfterValidator(check)


def precision_field(gpu_setting: str) -> Any:
    """The field's default (fp32) and description, naming `gpu_setting` as what fp16 needs."""
    return Field(default=DEFAULT_PRECISION, description=f"fp32, or bf16 / fp16 autocast of every model call "
                 f"(weights stay fp32, outputs are float32; fp16 needs {gpu_setting})")


# The precision of a config whose `use_gpu: bool` puts its model on a GPU (embed, evaluate).
UseGpuPrecision = Annotated[Precision, fp16_on_gpu("use_gpu: true", lambda fields: fields.get("use_gpu") is True)]
