"""eroseg: reproducible adversarial robustness for semantic segmentation.

EroSeg (an erosion attack that starts at the least confident pixels and
spreads into the confident ones), EroSeg-AT, and the baselines a reviewer
compares them with (FGSM, PGD, SegPGD, CosPGD, worst case over attacks).
"""

__version__ = "0.1.0"
