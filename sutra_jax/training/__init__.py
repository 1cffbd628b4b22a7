"""Training: phases, optimizers, checkpoints, the train step and the loop.

  phases       PhaseConfig and the strict hand-off of weights between phases
  optimizers   AdamW, warm-up + cosine schedule, trainable and decay masks
  checkpoints  orbax checkpoints: resume and params-only restore
  train_step   the loss and the jitted, sharded train step
  metrics      log lines, TensorBoard scalars and metrics.jsonl
  trainer      `train(run_dir, phase)`, the loop of one phase
"""
