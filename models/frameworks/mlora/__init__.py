"""MLoRA (Yang et al., RecSys'24, "MLoRA: Multi-Domain Low-Rank Adaptive Network for CTR
Prediction"): a shared network whose fully-connected layers each carry a low-rank adapter per
domain; ``layers`` holds the adapted dense layer and MLP, ``model`` the framework ``mlora``."""
from models.frameworks.mlora.layers import LoRADense, LoRAMLP, lora_rank  # noqa: F401
from models.frameworks.mlora.model import MLoRA  # noqa: F401
