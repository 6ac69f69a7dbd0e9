"""The ads-world simulator: raw impression logs with known ground truth (docs/simulator.md)."""
from pipeline.simulator.config import SimulatorConfig
from pipeline.simulator.run import simulate

__all__ = ["SimulatorConfig", "simulate"]
