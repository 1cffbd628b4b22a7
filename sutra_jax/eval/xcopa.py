"""XCOPA files and prompts.

XCOPA (cross-lingual Choice Of Plausible Alternatives) gives a premise, two
alternatives and whether the question asks for the cause or the effect.
The files are JSON Lines named `<split>.<language>.jsonl`, one example per
line: `{"premise", "choice1", "choice2", "question": "cause"|"effect",
"label": 0|1, "idx"}`. Items with the same `idx` are translations of each
other. `--data_dir` is searched recursively for such files.

Prompts (answer scoring, the usual form for COPA): the premise without its
final full stop, then the language's word for "because" (cause) or
"therefore" (effect), then each alternative with a lower-case first letter.
Letter scoring lists both alternatives as options A and B instead.
"""

import json
import pathlib
import re

from sutra_jax.errors import DataError
from sutra_jax.eval import multiple_choice as mc

LANGUAGES = ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh")
SPLITS = ("train", "val", "test")
_FILE = re.compile(r"^(train|val|test)\.([A-Za-z\-]+)\.jsonl$")
_FIELDS = ("premise", "choice1", "choice2", "question", "label", "idx")

# The words for "because" (question "cause") and "therefore" ("effect").
# Languages missing here use the English words.
# NOTE: the Haitian Creole and Quechua words are dictionary translations
# that no native speaker has checked.
CONNECTORS = {
    "en": ("because", "therefore"),
    "et": ("sest", "seetõttu"),
    "ht": ("paske", "kidonk"),
    "id": ("karena", "maka"),
    "it": ("perché", "quindi"),
    "qu": ("imaraykuchus", "chayrayku"),
    "sw": ("kwa sababu", "kwa hiyo"),
    "ta": ("ஏனெனில்", "எனவே"),
    "th": ("เพราะ", "ดังนั้น"),
    "tr": ("çünkü", "bu yüzden"),
    "vi": ("bởi vì", "vì vậy"),
    "zh": ("因为", "所以"),
}
# Full stops that end a premise, including the ideographic and Thai ones.
_FINAL_STOPS = ".。।"


def find_files(data_dir: str, split: str | None) -> tuple[str, dict]:
  """Finds the XCOPA files of one split.

  Args:
    data_dir: folder searched recursively for `<split>.<lang>.jsonl`.
    split: `val`, `test` or `train`; None takes `test` if present, else
      `val`.

  Returns:
    (the split, `{language: path}`).

  Raises:
    DataError: the folder is missing or has no file of the split.
  """
  root = pathlib.Path(data_dir)
  if not root.is_dir():
    raise DataError(f"XCOPA data directory not found: {data_dir!r}")
  found: dict[str, dict[str, pathlib.Path]] = {}
  for path in sorted(root.rglob("*.jsonl")):
    match = _FILE.match(path.name)
    if match:
      found.setdefault(match.group(1), {})[match.group(2)] = path
  if split is None:
    split = "test" if "test" in found else "val"
  if not found.get(split):
    available = ", ".join(sorted(found)) or "none"
    raise DataError(f"no XCOPA files {split}.<language>.jsonl under "
                    f"{data_dir!r} (splits found: {available}); pass another "
                    "--split or --data_dir")
  return split, found[split]


def read_file(path: pathlib.Path) -> list[dict]:
  """Reads and checks one XCOPA JSON Lines file.

  Raises:
    DataError: a line that is not JSON, lacks a field, or has a label other
      than 0 or 1.
  """
  items = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path} line {number}"
      try:
        item = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg})") from None
      missing = [name for name in _FIELDS if name not in item]
      if missing:
        raise DataError(f"{where}: missing field {missing[0]!r}")
      if item["label"] not in (0, 1):
        raise DataError(f"{where}: invalid label {item['label']!r}: expected "
                        "0 or 1; fix the line")
      if item["question"] not in ("cause", "effect"):
        raise DataError(f"{where}: invalid question {item['question']!r}: "
                        "expected 'cause' or 'effect'")
      items.append(item)
  return items


def _lower_first(text: str) -> str:
  text = text.strip()
  return text[:1].lower() + text[1:]


def _answer_context(item: dict, language: str) -> str:
  because, therefore = CONNECTORS.get(language, CONNECTORS["en"])
  connector = because if item["question"] == "cause" else therefore
  premise = item["premise"].strip().rstrip(_FINAL_STOPS)
  return f"{premise}{mc.answer_separator(language)}{connector}"


def _letter_context(item: dict) -> str:
  return (f"{item['premise'].strip()}\nQuestion: what was the "
          f"{item['question']}?\nA. {item['choice1'].strip()}\n"
          f"B. {item['choice2'].strip()}\nAnswer:")


def _solved(item: dict, language: str, scoring: str) -> str:
  if scoring == mc.LETTER:
    return f"{_letter_context(item)} {mc.LETTERS[item['label']]}\n\n"
  choice = item["choice1"] if item["label"] == 0 else item["choice2"]
  separator = mc.answer_separator(language)
  return f"{_answer_context(item, language)}{separator}{_lower_first(choice)}\n\n"


def make_questions(items: list[dict], language: str, num_shots: int,
                   scoring: str) -> list[mc.Question]:
  """Builds the prompts of one language's items.

  The shots of a question are the first `num_shots` other items of the same
  file, so k-shot results on a split reuse that split's answers.
  """
  separator = mc.answer_separator(language)
  questions = []
  for item in items:
    shots = [s for s in items if s["idx"] != item["idx"]][:num_shots]
    prefix = "".join(_solved(s, language, scoring) for s in shots)
    if scoring == mc.LETTER:
      context = prefix + _letter_context(item)
      continuations = (" A", " B")
    else:
      context = prefix + _answer_context(item, language)
      continuations = tuple(separator + _lower_first(item[name])
                            for name in ("choice1", "choice2"))
    questions.append(mc.Question(
        language=language, subject=item["question"],
        question_id=str(item["idx"]), context=context,
        continuations=continuations, label=item["label"]))
  return questions
