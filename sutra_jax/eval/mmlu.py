"""MMLU files and prompts, in one or many languages.

Two file layouts are read:

* the standard layout of the original release: one folder per split
  (`dev/`, `val/`, `test/`) with one CSV file per subject,
  `<subject>_<split>.csv`, without a header row, 6 columns:
  question, A, B, C, D, answer letter;
* the layout of the translated releases: CSV files with a header row that
  names the columns Question, A, B, C, D, Answer and (optionally) Subject.
  Other columns, such as a leading row number, are ignored. The split comes
  from the file name (a `dev`, `val`/`validation` or `test` part; `test`
  when none), for example `mmlu_HI_IN.csv` or `dev.csv`.

`--data_dir` is the folder of one language (its code is the last `_`-part
of the folder name, so `mmlu_en` is English) or a folder of per-language
folders named by their codes. Flat files named `mmlu_<LANG>_<REGION>.csv`
are one language each.

A prompt has the classic form of the original paper: a header naming the
subject, k solved examples from the dev split of the same language, then the
question. The header and the `Answer:` marker stay in English in every
language.
"""

import csv
import dataclasses
import pathlib
import re

from sutra_jax.errors import DataError
from sutra_jax.eval import multiple_choice as mc

SPLITS = ("dev", "val", "test")
_STANDARD_COLUMNS = 6
_HEADER_COLUMNS = ("Question", "A", "B", "C", "D", "Answer")
_CHOICES = 4
# Subject of translated rows that have no Subject column.
_NO_SUBJECT = "all"
_FLAT_FILE = re.compile(r"^mmlu_([A-Za-z]{2,3})[_-][A-Za-z0-9]+$")


@dataclasses.dataclass(frozen=True)
class Item:
  """One MMLU question as read from its file.

  Attributes:
    question: the question text.
    choices: the four options A to D.
    answer: index of the correct option.
    subject: the subject, such as `college_biology`.
    index: position of the question in its subject and split, which matches
      parallel questions of different languages.
  """

  question: str
  choices: tuple[str, ...]
  answer: int
  subject: str
  index: int


# --- reading ----------------------------------------------------------------


def _answer_index(value: str, where: str) -> int:
  letter = value.strip()
  if len(letter) != 1 or letter not in mc.LETTERS[:_CHOICES]:
    raise DataError(f"{where}: invalid answer {value!r}: expected one of "
                    f"{', '.join(mc.LETTERS[:_CHOICES])}; fix the row")
  return mc.LETTERS.index(letter)


def _read_rows(path: pathlib.Path) -> list[list[str]]:
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      return [row for row in csv.reader(f) if any(cell.strip()
                                                  for cell in row)]
  except UnicodeDecodeError as e:
    raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte "
                    f"{e.start}); convert it to UTF-8") from None
  except csv.Error as e:
    raise DataError(f"{path} is not a valid CSV file: {e}") from None


def _has_header(rows: list[list[str]]) -> bool:
  names = {cell.strip() for cell in rows[0]} if rows else set()
  return set(_HEADER_COLUMNS) <= names


def _standard_items(rows, subject: str, path) -> list[Item]:
  items = []
  for number, row in enumerate(rows, start=1):
    where = f"{path} row {number}"
    if len(row) != _STANDARD_COLUMNS:
      raise DataError(f"{where}: expected 6 columns (question, A, B, C, D, "
                      f"answer), got {len(row)}; fix the row")
    items.append(Item(question=row[0], choices=tuple(row[1:5]),
                      answer=_answer_index(row[5], where), subject=subject,
                      index=len(items)))
  return items


def _header_items(rows, path) -> list[Item]:
  header = [cell.strip() for cell in rows[0]]
  column = {name: header.index(name) for name in header}
  subject_column = column.get("Subject")
  counts: dict[str, int] = {}
  items = []
  for number, row in enumerate(rows[1:], start=2):
    where = f"{path} row {number}"
    if len(row) != len(header):
      raise DataError(f"{where}: expected {len(header)} columns like the "
                      f"header, got {len(row)}; fix the row")
    subject = (row[subject_column].strip() if subject_column is not None
               else _NO_SUBJECT) or _NO_SUBJECT
    items.append(Item(
        question=row[column["Question"]],
        choices=tuple(row[column[letter]] for letter in "ABCD"),
        answer=_answer_index(row[column["Answer"]], where), subject=subject,
        index=counts.get(subject, 0)))
    counts[subject] = counts.get(subject, 0) + 1
  return items


def _split_of_file(stem: str) -> str:
  parts = set(re.split(r"[_.\-]", stem.lower()))
  if "dev" in parts:
    return "dev"
  if parts & {"val", "validation"}:
    return "val"
  return "test"


def _read_standard_folder(folder: pathlib.Path) -> dict[str, list[Item]]:
  splits = {}
  for split in SPLITS:
    split_dir = folder / split
    if not split_dir.is_dir():
      continue
    items = []
    for path in sorted(split_dir.glob("*.csv")):
      subject = path.stem.removesuffix(f"_{split}")
      rows = _read_rows(path)
      if rows and _has_header(rows):
        items.extend(_header_items(rows, path))
      else:
        items.extend(_standard_items(rows, subject, path))
    splits[split] = items
  return splits


def _read_header_files(paths) -> dict[str, list[Item]]:
  splits: dict[str, list[Item]] = {}
  for path in paths:
    rows = _read_rows(path)
    if not rows or not _has_header(rows):
      raise DataError(f"{path} has no header row with the columns "
                      f"{', '.join(_HEADER_COLUMNS)}; add it, or use the "
                      "standard layout <split>/<subject>_<split>.csv")
    splits.setdefault(_split_of_file(path.stem), []).extend(
        _header_items(rows, path))
  return splits


def _language_of_folder(folder: pathlib.Path) -> str:
  return folder.name.rsplit("_", 1)[-1]


def _is_language_folder(folder: pathlib.Path) -> bool:
  return (any((folder / split).is_dir() for split in SPLITS) or
          any(folder.glob("*.csv")))


def read_mmlu(data_dir: str,
              language: str | None = None) -> dict[str, dict[str, list[Item]]]:
  """Reads every language of an MMLU folder.

  Args:
    data_dir: a language folder or a folder of language folders (see the
      module docstring).
    language: the code of a single-language folder; None takes it from the
      folder name.

  Returns:
    `{language code: {split: items}}`.

  Raises:
    DataError: a missing folder, no MMLU files, or a malformed row (the
      message names the file and row).
  """
  root = pathlib.Path(data_dir)
  if not root.is_dir():
    raise DataError(f"MMLU data directory not found: {data_dir!r}")
  flat = {m.group(1).lower(): path for path in sorted(root.glob("*.csv"))
          if (m := _FLAT_FILE.match(path.stem))}
  if any((root / split).is_dir() for split in SPLITS):
    languages = {language or _language_of_folder(root):
                 _read_standard_folder(root)}
  elif flat:
    languages = {code: _read_header_files([path])
                 for code, path in flat.items()}
  elif any(root.glob("*.csv")):
    languages = {language or _language_of_folder(root):
                 _read_header_files(sorted(root.glob("*.csv")))}
  else:
    languages = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
      if _is_language_folder(folder):
        if any((folder / split).is_dir() for split in SPLITS):
          languages[folder.name] = _read_standard_folder(folder)
        else:
          languages[folder.name] = _read_header_files(
              sorted(folder.glob("*.csv")))
  languages = {code: splits for code, splits in languages.items()
               if any(splits.values())}
  if not languages:
    raise DataError(f"no MMLU CSV files in {data_dir!r}: expected "
                    "<split>/<subject>_<split>.csv files, translated CSV "
                    "files with a header row, or one such folder per "
                    "language")
  return languages


def choose_split(languages: dict[str, dict[str, list[Item]]],
                 split: str | None) -> str:
  """Returns `split`, or the test split if every language has one, else val.

  Raises:
    DataError: a language has no questions in the chosen split.
  """
  if split is None:
    split = "test" if all(s.get("test") for s in languages.values()) else "val"
  for code, splits in languages.items():
    if not splits.get(split):
      found = ", ".join(s for s in SPLITS if splits.get(s)) or "none"
      raise DataError(f"MMLU language {code!r} has no {split!r} questions "
                      f"(splits found: {found}); pass another --split")
  return split


# --- prompts ----------------------------------------------------------------


def _subject_words(subject: str) -> str:
  return subject.replace("_", " ")


def _format_with_options(item: Item) -> str:
  lines = [item.question.strip()]
  lines += [f"{letter}. {choice.strip()}"
            for letter, choice in zip(mc.LETTERS, item.choices)]
  return "\n".join(lines) + "\nAnswer:"


def _format_example(item: Item, scoring: str, separator: str) -> str:
  if scoring == mc.LETTER:
    return _format_with_options(item) + f" {mc.LETTERS[item.answer]}\n\n"
  answer = item.choices[item.answer].strip()
  return f"{item.question.strip()}\nAnswer:{separator}{answer}\n\n"


def make_questions(items: list[Item], dev_items: list[Item], language: str,
                   num_shots: int, scoring: str) -> list[mc.Question]:
  """Builds the k-shot prompts of `items` with shots from `dev_items`.

  The shots of a question are the first `num_shots` dev questions of its
  subject; subjects with fewer dev questions get fewer shots.

  Args:
    items: the questions to evaluate.
    dev_items: the dev split of the same language.
    language: their language code.
    num_shots: solved examples per prompt.
    scoring: `letter` (the prompt lists the options and each continuation
      is a letter) or `answer` (each continuation is an option's text).

  Raises:
    DataError: `num_shots` > 0 but the language has no dev questions.
  """
  if num_shots and not dev_items:
    raise DataError(f"MMLU language {language!r} has no dev split for "
                    f"{num_shots}-shot prompts; add dev files or pass "
                    "--num_shots=0")
  by_subject: dict[str, list[Item]] = {}
  for item in dev_items:
    by_subject.setdefault(item.subject, []).append(item)
  separator = mc.answer_separator(language)
  questions = []
  for item in items:
    shots = by_subject.get(item.subject, [])[:num_shots]
    header = ("The following are multiple choice questions (with answers) "
              f"about {_subject_words(item.subject)}.\n\n")
    context = header + "".join(_format_example(s, scoring, separator)
                               for s in shots)
    if scoring == mc.LETTER:
      context += _format_with_options(item)
      continuations = tuple(f" {mc.LETTERS[i]}"
                            for i in range(len(item.choices)))
    else:
      context += f"{item.question.strip()}\nAnswer:"
      continuations = tuple(separator + c.strip() for c in item.choices)
    questions.append(mc.Question(
        language=language, subject=item.subject,
        question_id=f"{item.subject}/{item.index}", context=context,
        continuations=continuations, label=item.answer))
  return questions
