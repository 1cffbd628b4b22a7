"""Data: the demo corpus, seqio tasks and mixtures, and the input pipeline.

Modules, from raw text to batches:

* `chat`: the chat format of conversations and decoding prompts.
* `corpus`: the embedded demo corpus and its fixed held-out split.
* `tasks`: seqio Tasks over the demo corpus.
* `mixtures`: temperature-sampled seqio Mixtures and the gin-configurable
  `phase_mixture`.
* `feature_converter`: packs examples into decoder features with per-token
  language ids.
* `pipeline`: `get_dataset`, the batched [B, L] dataset of a task or mixture.

Importing this package imports neither TensorFlow nor seqio. `tasks`,
`feature_converter` and `pipeline` import both.
"""
