"""The kinds of training example, as carried per token in a batch.

`decoder_example_kinds[t]` selects the loss term that scores token t (see
`sutra_jax.training.losses`). This module imports neither TensorFlow nor
JAX, so both the input pipeline and the train step can read it.
"""

# Monolingual text and conversations: next-token loss on every token. Also
# the value on padding, and for batches without the feature.
TEXT = 0
# A translation example: source then target in one segment. The translation
# loss scores the target side only.
TRANSLATION = 1
# A parallel pair: the two sentences become two consecutive segments, each
# scored by the next-token loss, and the concept-consistency loss compares
# their pooled core states.
PARALLEL = 2

# The values of the string feature `example_kind` of a task.
NAMES = {"text": TEXT, "translation": TRANSLATION, "parallel": PARALLEL}
