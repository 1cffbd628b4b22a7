"""The demo report: a JSON file and a short printed table."""

import json
import os
import tempfile
from typing import Any, Mapping


def write_json_atomically(path: str, payload: Mapping[str, Any]) -> None:
  """Writes `payload` as JSON so that `path` is complete or absent.

  The file is written to a temporary name in the same folder and renamed,
  so an interrupted run never leaves a truncated report.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, temp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-",
                                   suffix=".json")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(payload, f, ensure_ascii=False, indent=2, sort_keys=False)
      f.write("\n")
    os.replace(temp_path, path)
  except BaseException:
    if os.path.exists(temp_path):
      os.remove(temp_path)
    raise


def format_report(report: Mapping[str, Any]) -> str:
  """Formats the demo report as a few plain-text tables."""
  lines = ["phase        steps  first loss  final loss  languages"]
  for phase in report["phases"]:
    lines.append(f"{phase['name']:<12} {phase['steps']:>5}  "
                 f"{phase['first_loss']:>10.3f}  {phase['final_loss']:>10.3f}"
                 f"  {len(phase['per_language_loss']):>9}")

  perplexity = report["eval"]["per_language_perplexity"]
  fertility = report["tokenizer"]["tokens_per_word"]
  lines.append("")
  lines.append(f"tokenizer vocabulary: {report['tokenizer']['vocab_size']}")
  lines.append("language  held-out perplexity  tokens/word")
  for code in sorted(perplexity):
    lines.append(f"{code:<9} {perplexity[code]:>19.2f}  "
                 f"{fertility.get(code, float('nan')):>11.2f}")

  lines.append("")
  for sample in report["samples"]:
    lines.append(f"[{sample['language']}] {sample['prompt']!r} -> "
                 f"{sample['output']!r}")
  return "\n".join(lines)
