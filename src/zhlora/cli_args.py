"""Command-line options that several stages share (argparse only: light to import)."""
from __future__ import annotations

DEVICE_HELP = "auto (default: CUDA when available, else CPU) | cpu | cuda | cuda:N"
DTYPE_HELP = ("auto (default: bf16 on a GPU with native bf16, fp16 on an older GPU, fp32 on CPU) | "
              "float32 | bfloat16 | float16")


def add_device_args(p, quantization: bool = True, dtype: bool = True) -> None:
    """--device and --dtype (decided by zhlora.models.device.decide), --quantization (zhlora.models.quant)."""
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    if dtype:
        p.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    if quantization:
        p.add_argument("--quantization", choices=["none", "4bit", "8bit"], default="none",
                       help="load the base quantized with bitsandbytes (4bit: NF4, as QLoRA trains it; needs "
                       "pip install 'zhlora[qlora]'); the adapters stay in full precision")
