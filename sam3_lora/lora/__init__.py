"""LoRA for SAM3: config, layers, injection and adapter files, kept apart as in PEFT."""

from sam3_lora.lora.adapter import AdapterError, AdapterInfo, load_adapter, read_adapter, save_adapter
from sam3_lora.lora.config import PARTS, TARGETS, LoraConfig, LoraConfigError
from sam3_lora.lora.inject import (
    InjectionReport,
    adapter_scale,
    adapter_state_dict,
    adapters_off,
    base_fingerprint,
    count_trainable,
    inject_lora,
    lora_modules,
    lora_parameters,
    merge_lora,
    parameter_summary,
    set_adapter_scale,
    unmerge_lora,
)
from sam3_lora.lora.layers import LoraDelta, LoraLinear, LoraMultiheadAttention

__all__ = [
    "AdapterError",
    "AdapterInfo",
    "InjectionReport",
    "LoraConfig",
    "LoraConfigError",
    "LoraDelta",
    "LoraLinear",
    "LoraMultiheadAttention",
    "PARTS",
    "adapter_scale",
    "adapters_off",
    "TARGETS",
    "adapter_state_dict",
    "base_fingerprint",
    "count_trainable",
    "inject_lora",
    "load_adapter",
    "lora_modules",
    "lora_parameters",
    "merge_lora",
    "parameter_summary",
    "read_adapter",
    "save_adapter",
    "set_adapter_scale",
    "unmerge_lora",
]
