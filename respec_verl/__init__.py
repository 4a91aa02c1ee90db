"""respec_verl: speculative rollouts for verl, with an adaptive controller and an evolving drafter."""

__version__ = "0.1.0"
