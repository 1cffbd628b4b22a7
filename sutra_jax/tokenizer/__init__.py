"""Multilingual SentencePiece tokenizers: training and fertility reports.

See `sutra_jax.tokenizer.train`, and the `sutra-tokenizer` command in
`sutra_jax.cli.tokenizer`.
"""
