r"""sutra-decode: generate a greedy answer with a chosen output language.

  sutra-decode --checkpoint_dir=runs/demo/alignment --prompt="नमस्ते" \
      --prompt_language=hi --output_language=en

The prompt is wrapped in the chat format used in training (a user turn
followed by the assistant marker) unless --raw is set. The prompt language
routes the prompt through its encoder blocks; the output language routes the
generated tokens through its decoder blocks.
"""

import sys
from typing import Sequence

from absl import flags

from sutra_jax.cli import common
from sutra_jax.errors import ConfigError

_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Run directory written by sutra-train.")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step to load; default: the newest.")
_PROMPT = flags.DEFINE_string("prompt", None, "Text to answer.")
_OUTPUT_LANGUAGE = flags.DEFINE_string(
    "output_language", None, "Language code of the answer; selects the "
    "decoder blocks.")
_PROMPT_LANGUAGE = flags.DEFINE_string(
    "prompt_language", None, "Language code of the prompt; selects the "
    "encoder blocks. Default: the output language.")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 32, "Maximum number of generated tokens.")
_RAW = flags.DEFINE_bool(
    "raw", False, "Continue the prompt as plain text instead of answering "
    "it as a chat user turn.")


def _check_flags(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {' '.join(argv[1:])!r}")
  for name, flag in (("checkpoint_dir", _CHECKPOINT_DIR),
                     ("prompt", _PROMPT),
                     ("output_language", _OUTPUT_LANGUAGE)):
    if not flag.value:
      raise ConfigError(f"--{name} is required")
  if _MAX_NEW_TOKENS.value <= 0:
    raise ConfigError(f"invalid --max_new_tokens {_MAX_NEW_TOKENS.value}: "
                      "expected a positive integer")


def decode(checkpoint_dir: str, step: int | None, prompt: str,
           prompt_language: str, output_language: str, max_new_tokens: int,
           raw: bool) -> str:
  """Loads the run and returns the decoded answer."""
  # pylint: disable=g-import-not-at-top
  import gin
  from sutra_jax import gin_utils
  from sutra_jax import languages
  from sutra_jax.data import chat
  from sutra_jax.inference import generate
  from sutra_jax.inference import loading
  # pylint: enable=g-import-not-at-top

  # Check the language codes against the run's table before restoring.
  gin.clear_config()
  gin_utils.parse_config([loading.check_run_dir(checkpoint_dir)], [],
                         finalize=False)
  table = languages.language_table()
  languages.check_codes([output_language], table, "--output_language")
  languages.check_codes([prompt_language], table, "--prompt_language")

  run = loading.load_run(checkpoint_dir, step)
  vocabulary = run.vocabulary
  text = prompt if raw else chat.format_prompt(prompt)
  request = generate.Request(
      prompt_ids=vocabulary.encode(text),
      prompt_language_id=table.id(prompt_language),
      output_language_id=table.id(output_language))
  stop_ids = chat.stop_token_ids(vocabulary)
  ids = generate.greedy_generate(run.model, [request],
                                 max_new_tokens=max_new_tokens,
                                 stop_ids=stop_ids)[0]
  return vocabulary.decode(ids)


def main(argv: Sequence[str]) -> int:
  _check_flags(argv)
  answer = decode(_CHECKPOINT_DIR.value, _STEP.value, _PROMPT.value,
                  _PROMPT_LANGUAGE.value or _OUTPUT_LANGUAGE.value,
                  _OUTPUT_LANGUAGE.value, _MAX_NEW_TOKENS.value, _RAW.value)
  print(answer)
  sys.stdout.flush()
  return 0


def run() -> None:
  """Console-script entry point of `sutra-decode`."""
  common.run_main(main)


if __name__ == "__main__":
  run()
