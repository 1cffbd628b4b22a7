"""No code path of the package unpickles a file.

Unpickling runs arbitrary code, so the package reads user-supplied paths
(checkpoints, tokenizers, corpora, evaluation files) only through formats
that carry data: orbax/tensorstore, SentencePiece protos, JSON, CSV, text
and TFRecord.
"""

import pathlib
import re

import sutra_jax

# Ways to load a pickle: the modules themselves, and NumPy's opt-in.
_PICKLE_LOADS = re.compile(
    r"\bimport (c?pickle|dill|joblib|cloudpickle)\b|"
    r"\bfrom (c?pickle|dill|joblib|cloudpickle) import\b|"
    r"allow_pickle\s*=\s*True|\bpd\.read_pickle\b")


def test_package_never_loads_pickles():
  root = pathlib.Path(sutra_jax.__file__).parent
  offenders = []
  for path in sorted(root.rglob("*.py")):
    for number, line in enumerate(path.read_text(encoding="utf-8")
                                  .splitlines(), start=1):
      if _PICKLE_LOADS.search(line):
        offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")

  assert not offenders, "\n".join(offenders)
