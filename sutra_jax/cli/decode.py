r"""sutra-decode: answer a prompt, or chat, with a chosen output language.

  sutra-decode --checkpoint_dir=runs/demo/alignment --prompt="नमस्ते" \
      --prompt_language=hi --output_language=en
  sutra-decode --checkpoint_dir=DIR --output_language=hi --chat
  sutra-decode --checkpoint_dir=DIR --prompt=... --output_language=en \
      --temperature=0.8 --top_p=0.9 --stop="." --max_new_tokens=64

The prompt is wrapped in the chat format used in training (a user turn
followed by the assistant marker) unless --raw is set. The prompt language
routes the prompt through its encoder blocks; the output language routes the
generated tokens through its decoder blocks. Decoding uses the KV cache.

With --chat, each line of standard input is a user message and each answer
is printed as one block followed by an empty line; the conversation so far
is the prompt of the next answer. `/reset` forgets the conversation, and
`/exit` or the end of input ends the session. In a terminal, `> ` prompts
for each message.

With --retrieval_dir, the top passages of a BM25 index over the folder's
.txt, .md and .jsonl documents are prepended to each message with their
source names (see `sutra_jax.inference.retrieval`). The index is cached in
--retrieval_cache_dir and rebuilt when the documents change.
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
_CHAT = flags.DEFINE_bool(
    "chat", False, "Hold a multi-turn chat: read user messages from standard "
    "input, one per line.")
_OUTPUT_LANGUAGE = flags.DEFINE_string(
    "output_language", None, "Language code of the answer; selects the "
    "decoder blocks.")
_PROMPT_LANGUAGE = flags.DEFINE_string(
    "prompt_language", None, "Language code of the prompt; selects the "
    "encoder blocks. Default: the output language.")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 32, "Maximum number of generated tokens per answer.")
_MAX_PROMPT_TOKENS = flags.DEFINE_integer(
    "max_prompt_tokens", 1024, "--chat: maximum prompt length in tokens; the "
    "oldest turns are dropped to fit.")
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 0.0, "Sampling temperature; 0 decodes greedily.")
_TOP_K = flags.DEFINE_integer(
    "top_k", 0, "Sample from the k most probable tokens only; 0 keeps all.")
_TOP_P = flags.DEFINE_float(
    "top_p", 1.0, "Sample from the smallest set of most probable tokens whose "
    "probability reaches top_p; 1 keeps all.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampling.")
_STOP = flags.DEFINE_multi_string(
    "stop", [], "Text that ends the answer and is not printed; repeat for "
    "several.")
_RETRIEVAL_DIR = flags.DEFINE_string(
    "retrieval_dir", None, "Folder of .txt, .md or .jsonl documents; the "
    "passages that best match the prompt are prepended to it.")
_RETRIEVAL_TOP_K = flags.DEFINE_integer(
    "retrieval_top_k", 3, "Passages prepended to each prompt.")
_RETRIEVAL_CACHE_DIR = flags.DEFINE_string(
    "retrieval_cache_dir", None, "Where the BM25 index is cached; default "
    "$XDG_CACHE_HOME/sutra_jax/bm25 or ~/.cache/sutra_jax/bm25.")
_RAW = flags.DEFINE_bool(
    "raw", False, "Continue the prompt as plain text instead of answering "
    "it as a chat user turn.")


def _check_flags(argv: Sequence[str]):
  """Validates the command line; returns the sampling settings."""
  # pylint: disable=g-import-not-at-top
  from sutra_jax.inference import sampling
  # pylint: enable=g-import-not-at-top
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {' '.join(argv[1:])!r}")
  required = [("checkpoint_dir", _CHECKPOINT_DIR),
              ("output_language", _OUTPUT_LANGUAGE)]
  if not _CHAT.value:
    required.append(("prompt", _PROMPT))
  for name, flag in required:
    if not flag.value:
      raise ConfigError(f"--{name} is required")
  if _CHAT.value and (_PROMPT.value or _RAW.value):
    raise ConfigError("--chat reads the messages from standard input: drop "
                      "--prompt and --raw")
  for flag in (_MAX_NEW_TOKENS, _MAX_PROMPT_TOKENS, _RETRIEVAL_TOP_K):
    if flag.value <= 0:
      raise ConfigError(f"invalid --{flag.name} {flag.value}: expected a "
                        "positive integer")
  if any(not s for s in _STOP.value):
    raise ConfigError("invalid --stop '': pass a non-empty string")
  return sampling.SamplingParams(temperature=_TEMPERATURE.value,
                                 top_k=_TOP_K.value, top_p=_TOP_P.value)


def _load_generator(checkpoint_dir: str, step: int | None,
                    prompt_language: str, output_language: str):
  """Checks the language codes, then restores the run's generator."""
  # pylint: disable=g-import-not-at-top
  import gin
  from sutra_jax import gin_utils
  from sutra_jax import languages
  from sutra_jax.inference import loading
  from sutra_jax.inference import text_generation
  # pylint: enable=g-import-not-at-top

  # Check the language codes against the run's table before restoring.
  gin.clear_config()
  gin_utils.parse_config([loading.check_run_dir(checkpoint_dir)], [],
                         finalize=False)
  table = languages.language_table()
  languages.check_codes([output_language], table, "--output_language")
  languages.check_codes([prompt_language], table, "--prompt_language")
  run = loading.load_run(checkpoint_dir, step)
  return text_generation.TextGenerator(run.model, run.vocabulary,
                                       run.language_table)


def _retriever():
  """Builds the BM25 retriever of --retrieval_dir, or returns None."""
  if _RETRIEVAL_DIR.value is None:
    return None
  # pylint: disable=g-import-not-at-top
  from sutra_jax.inference import retrieval
  # pylint: enable=g-import-not-at-top
  return retrieval.BM25Retriever(_RETRIEVAL_DIR.value,
                                 cache_dir=_RETRIEVAL_CACHE_DIR.value)


def decode(generator, prompt: str, prompt_language: str,
           output_language: str, max_new_tokens: int, raw: bool,
           sampling=None, stop: Sequence[str] = (), seed: int = 0,
           retriever=None, retrieval_top_k: int = 3) -> str:
  """Returns the answer to one prompt, with retrieved passages if given."""
  # pylint: disable=g-import-not-at-top
  from sutra_jax.data import chat
  from sutra_jax.inference import retrieval
  from sutra_jax.inference import sampling as sampling_lib
  from sutra_jax.inference import text_generation
  # pylint: enable=g-import-not-at-top

  if retriever is not None:
    prompt = retrieval.augment_prompt(
        prompt, retriever.retrieve(prompt, retrieval_top_k))
  request = text_generation.TextRequest(
      prompt=prompt if raw else chat.format_prompt(prompt),
      output_language=output_language, prompt_language=prompt_language,
      sampling=sampling or sampling_lib.GREEDY, stop=tuple(stop))
  return generator.generate([request], max_new_tokens=max_new_tokens,
                            seed=seed)[0]


def chat_loop(session, lines, output, interactive: bool) -> int:
  """Answers each line of `lines` on `output`; returns the turns answered."""
  turns = 0
  while True:
    if interactive:
      output.write("> ")
      output.flush()
    line = lines.readline()
    if not line:
      break
    message = line.strip()
    if not message:
      continue
    if message == "/exit":
      break
    if message == "/reset":
      session.reset()
      continue
    try:
      answer = session.reply(message)
    except ConfigError as e:
      # A bad message (one with a role marker) ends that turn, not the chat.
      print(f"error: {e}", file=sys.stderr)
      continue
    output.write(answer + "\n\n")
    output.flush()
    turns += 1
  return turns


def main(argv: Sequence[str]) -> int:
  sampling = _check_flags(argv)
  prompt_language = _PROMPT_LANGUAGE.value or _OUTPUT_LANGUAGE.value
  # The documents are indexed first, so a bad folder fails before the model
  # is restored.
  retriever = _retriever()
  generator = _load_generator(_CHECKPOINT_DIR.value, _STEP.value,
                              prompt_language, _OUTPUT_LANGUAGE.value)
  if _CHAT.value:
    # pylint: disable=g-import-not-at-top
    from sutra_jax.inference import chat_session
    # pylint: enable=g-import-not-at-top
    session = chat_session.ChatSession(
        generator, output_language=_OUTPUT_LANGUAGE.value,
        prompt_language=prompt_language, sampling=sampling,
        max_new_tokens=_MAX_NEW_TOKENS.value,
        max_prompt_tokens=_MAX_PROMPT_TOKENS.value, seed=_SEED.value,
        retriever=retriever, retrieval_top_k=_RETRIEVAL_TOP_K.value)
    chat_loop(session, sys.stdin, sys.stdout, sys.stdin.isatty())
    return 0
  answer = decode(generator, _PROMPT.value, prompt_language,
                  _OUTPUT_LANGUAGE.value, _MAX_NEW_TOKENS.value, _RAW.value,
                  sampling, _STOP.value, _SEED.value, retriever,
                  _RETRIEVAL_TOP_K.value)
  print(answer)
  sys.stdout.flush()
  return 0


def run() -> None:
  """Console-script entry point of `sutra-decode`."""
  common.run_main(main)


if __name__ == "__main__":
  run()
