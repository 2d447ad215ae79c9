"""Native decision-based attacks: HSJA, QEBA-S/F/I, NonLinear-BA and PSBA on one batched loop."""

from .attacks import HSJA, NLBA, PSBA, QEBA_F, QEBA_I, QEBA_S, PriorAttack

__all__ = ["HSJA", "NLBA", "PSBA", "QEBA_F", "QEBA_I", "QEBA_S", "PriorAttack"]
