"""DiscoVLA model: LoRA (every attention layer) + IVFusion (last blocks) on a frozen open_clip CLIP."""

from discovla.model.discovla import AdapterStateError, DiscoVLA, DiscoVLAConfig
from discovla.model.fusion import Adapter, FusionLayer, fusion_block_forward
from discovla.model.lora import LoRAAttention, install_lora

__all__ = [
    "Adapter",
    "AdapterStateError",
    "DiscoVLA",
    "DiscoVLAConfig",
    "FusionLayer",
    "LoRAAttention",
    "fusion_block_forward",
    "install_lora",
]
