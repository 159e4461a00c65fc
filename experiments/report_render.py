"""Renders the comparison report (experiments/report.py) as HTML and as Markdown.

The HTML page is self-contained: styles inline, figures embedded as base64 `data:` URIs, so it
references no file. The Markdown references the PNG files written beside it.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
from typing import Sequence

from xnorjax.summary import ModelSummary

Table = tuple[Sequence[str], Sequence[Sequence[str]]]


@dataclasses.dataclass
class Content:
  """What the report shows; figures are PNG file names (relative to the output directory)."""
  title: str
  split: str
  runs: list[tuple[str, str]]                 # (name, work directory)
  final: Table                                # final metrics, one column per run
  curves: list[str]                           # learning-curve PNGs
  confusion: list[tuple[str, str]]            # (run name, PNG)
  per_class: Table
  config_diff: Table
  summaries: list[tuple[str, ModelSummary]]
  configs: list[tuple[str, str]]              # (run name, config JSON)


def _is_number(cell: str) -> bool:
  text = cell.replace(",", "").replace("%", "").replace("x", "").split(" ")[0]
  try:
    float(text)
    return True
  except ValueError:
    return False


# ------------------------------------------------------------------------------------------------
# HTML.
# ------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 1em; }
figure { margin: 0 0 1em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: .85em; }
details { margin: .5em 0; } summary { cursor: pointer; font-weight: 600; }
.note { color: #555; font-size: .9em; }
"""


def _html_table(table: Table) -> str:
  header, rows = table
  if not rows:
    return '<p class="note">(none)</p>'
  out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
  for row in rows:
    cells = []
    for i, cell in enumerate(row):
      cls = ' class="num"' if i > 0 and _is_number(cell) else ""
      cells.append(f"<td{cls}>{html.escape(cell)}</td>")
    out.append("<tr>" + "".join(cells) + "</tr>")
  out.append("</table>")
  return "\n".join(out)


def _data_uri(path: str) -> str:
  with open(path, "rb") as f:
    return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _figure(image_dir: str, name: str, alt: str, caption: str = "") -> str:
  caption = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
  return (f'<figure><img src="{_data_uri(os.path.join(image_dir, name))}" alt="{html.escape(alt)}">'
          f"{caption}</figure>")


def to_html(content: Content, *, image_dir: str) -> str:
  """The page; the PNGs named in `content` are read from `image_dir` and embedded."""
  h = html.escape
  parts = [
      "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
      f"<title>{h(content.title)}</title><style>{_STYLE}</style></head><body>",
      f"<h1>{h(content.title)}</h1>",
      "<p>Runs: " + ", ".join(f"<b>{h(n)}</b> (<code>{h(w)}</code>)" for n, w in content.runs)
      + f". Evaluated on the <b>{h(content.split)}</b> split.</p>",
      "<h2>Final metrics</h2>", _html_table(content.final),
      '<p class="note">Evaluated: the checkpoint selected on validation accuracy (or the latest), '
      "evaluated now. Logged: values from metrics.jsonl written during training. Memory and MACs "
      "from <code>xnorjax.summary</code> (packed: binary kernels at 1 bit plus a float32 scale per "
      "output channel).</p>",
      "<h2>Learning curves</h2>", '<div class="grid">',
      *[_figure(image_dir, name, name[:-4].replace("_", " ")) for name in content.curves],
      "</div>",
      f"<h2>Confusion matrices ({h(content.split)} split)</h2>",
      *[_figure(image_dir, png, f"{name}: confusion matrix", f"{name}: counts (left) and "
                "row-normalised (right; each true class sums to 1, recall on the diagonal)")
        for name, png in content.confusion],
      f"<h2>Per-class precision, recall and F1 ({h(content.split)} split)</h2>",
      _html_table(content.per_class),
      "<h2>Model summaries</h2>",
  ]
  for name, s in content.summaries:
    header, rows = s.table()
    parts += [f"<h3>{h(name)}: {h(s.model_type)}</h3>", "<ul>",
              *[f"<li>{h(line)}</li>" for line in s.totals_lines()], "</ul>",
              f"<details><summary>Layers of {h(name)} (input shape {h(str(s.input_shape))})</summary>",
              _html_table((header, rows)), "</details>"]
  parts += ["<h2>Configurations</h2>", "<h3>Fields that differ</h3>", _html_table(content.config_diff)]
  for name, config_json in content.configs:
    parts.append(f"<details><summary>config.json of {h(name)}</summary><pre>{h(config_json)}</pre>"
                 "</details>")
  parts.append("</body></html>")
  return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------
# Markdown.
# ------------------------------------------------------------------------------------------------

def _md_cell(cell: str) -> str:
  return cell.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
  header, rows = table
  if not rows:
    return "(none)"
  align = ["---"] + ["---:" if any(_is_number(r[i]) for r in rows) else "---"
                     for i in range(1, len(header))]
  lines = ["| " + " | ".join(_md_cell(c) or " " for c in header) + " |", "|" + "|".join(align) + "|"]
  lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def to_markdown(content: Content) -> str:
  parts = [f"# {content.title}", "",
           "Runs: " + ", ".join(f"**{n}** (`{w}`)" for n, w in content.runs)
           + f". Evaluated on the **{content.split}** split.", "",
           "## Final metrics", "", _md_table(content.final), "",
           "## Learning curves", ""]
  parts += [f"![{name[:-4].replace('_', ' ')}]({name})" for name in content.curves]
  parts += ["", f"## Confusion matrices ({content.split} split)", ""]
  parts += [f"![{name}: confusion matrix]({png})" for name, png in content.confusion]
  parts += ["", f"## Per-class precision, recall and F1 ({content.split} split)", "",
            _md_table(content.per_class), "", "## Model summaries", ""]
  for name, s in content.summaries:
    parts += [f"### {name}: {s.model_type}", "", s.to_markdown(), ""]
  parts += ["## Configurations", "", "Fields that differ:", "", _md_table(content.config_diff), ""]
  for name, config_json in content.configs:
    parts += [f"<details><summary>config.json of {name}</summary>", "", "```json", config_json,
              "```", "", "</details>", ""]
  return "\n".join(parts)
