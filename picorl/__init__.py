"""picorl: RL from verifiable rewards on one GPU, with a rollout engine that shares the trainer's weights."""

__version__ = "0.1.0"
