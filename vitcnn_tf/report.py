"""The reproduction report, rendered to Markdown and to self-contained HTML from records (no re-parsing).

A :class:`Report` holds what a run did: the :class:`RunInfo` (preset, dataset, split, hardware, time), the models
(:class:`ModelRecord`: a checkpoint with its sha256, or a zoo model loaded or trained in this run), one
:class:`StageRecord` per stage (status, :class:`~vitcnn_tf.findings.Finding` objects, :class:`FigureRecord`
descriptions) and the figures that were skipped with the reason. :func:`render_markdown` and :func:`render_html`
turn it into a page a reader puts next to the paper:

* a summary header: how many findings hold / do not hold / are inconclusive, on which models, data, split,
  example counts and hardware, in how long;
* the findings table, the paper's claim beside our measurement and verdict, and for every CKA-based finding the
  same statistic under a second measure (Procrustes) with whether it survives, and the compared CKA against its
  permutation-null level with whether it clears it;
* one part per paper section, its figures in the paper's order (Section 4 opens with Figure 1), each captioned
  with the paper's figure number, what it shows and what to look for; the panels of one paper figure side by side
  (a CSS grid in HTML); figures without a description are captioned with their file name;
* a closing note: which CKA findings survive the second measure and clear the null, and which do not.
"""

import base64
import dataclasses
import html
import math
import os
import re

from vitcnn_tf import findings as findings_lib

SECTION_TITLES = {
    "4": "Section 4: Representation structure of ViTs and convolutional networks",
    "5": "Section 5: Local and global information in layer representations",
    "6": "Section 6: Representation propagation through skip connections",
    "7": "Section 7: Spatial information and localization",
    "8": "Section 8: Effects of scale on transfer learning",
}
VERDICTS = (findings_lib.HOLDS, findings_lib.DOES_NOT_HOLD, findings_lib.INCONCLUSIVE)
TITLE = "Do Vision Transformers See Like CNNs? Reproduction report"
INTERVAL_NOTE = ("Each threshold is the paper's claim as an effect size (vitcnn_tf.claims, docs/analyses.md). Values "
                 "are means over the trained seeds; intervals are 95% two-level bootstrap intervals (seeds, then "
                 "examples within each seed). A verdict *holds* when the whole interval is on the claimed side of the "
                 "threshold, *does not hold* when it is on the other side, else *inconclusive*. The control is the "
                 "same statistic on the same architectures at initialisation: a claim that holds there says nothing "
                 "about learning, and a claim about what training produces is then judged on the trained value minus "
                 "the control's.")
CHECKS_NOTE = ("Checks of the CKA findings, on a capped subset of the examples: the same statistic under orthogonal "
               "Procrustes similarity *survives* when it lies beyond the claim's no-effect level on the claimed side "
               "(a point estimate on another scale than CKA); the CKA the finding compares *clears* the permutation "
               "null when it is above the 95th percentile of its values over shuffled example pairings.")
CHECKS_TITLE = "Checks beyond CKA"


@dataclasses.dataclass(frozen=True)
class FigureRecord:
    """One figure file of a stage: ``path`` relative to the report's folder (``"<stage>/<file>"``);
    ``paper_figure`` the paper's figure number (``"1"``, ``"C.1"``, ``""`` for a figure of ours); ``caption`` what it
    shows and ``look_for`` what to look for (both ``""`` when the stage gave no description)."""

    path: str
    paper_figure: str = ""
    caption: str = ""
    look_for: str = ""

    @classmethod
    def from_dict(cls, stage_folder, data):
        """From a stage summary's ``figures`` entry ``{"file", "paper_figure", "caption", "look_for"}``."""
        return cls(path=f"{stage_folder}/{data['file']}", paper_figure=str(data.get("paper_figure") or ""),
                   caption=data.get("caption") or "", look_for=data.get("look_for") or "")


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """One stage of the run: ``status`` (``ran``, ``reused``, ``failed`` or ``skipped``), ``note`` (why it was
    skipped or failed), its findings, its figures and ``num_examples`` (None when not applicable)."""

    name: str
    section: str
    title: str
    status: str
    seconds: float = 0.0
    findings: tuple = ()
    figures: tuple = ()
    note: str = ""
    num_examples: int | None = None


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """A model the run used: ``source`` a checkpoint path or a zoo recipe; ``sha256`` of its weights file;
    ``status`` ``loaded`` (an existing file) or ``trained`` (trained in this run); ``accuracy`` the zoo model's test
    accuracy (None for checkpoints); ``train_seconds`` its training time (None when unknown)."""

    name: str
    source: str
    sha256: str = ""
    status: str = "loaded"
    accuracy: float | None = None
    train_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Settings of the run: ``preset``, ``dataset``, ``split``, ``hardware`` (a CPU / GPU description),
    ``seconds`` (wall time) and ``skipped_figures`` (``(figure, reason)`` pairs, e.g. ``("8", "no public ...")``)."""

    preset: str
    dataset: str
    split: str
    hardware: str
    seconds: float
    skipped_figures: tuple = ()


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything the report shows."""

    run: RunInfo
    stages: tuple
    models: tuple = ()

    @property
    def findings(self):
        """Every stage's findings, in stage order."""
        return [finding for stage in self.stages for finding in stage.findings]

    def verdict_counts(self):
        """``{verdict: number of findings}`` for holds / does not hold / inconclusive."""
        found = self.findings
        return {verdict: sum(finding.verdict == verdict for finding in found) for verdict in VERDICTS}


def figure_sort_key(paper_figure):
    """Sort key of a paper figure number: ``"1"`` < ``"2"`` < ``"13"`` < ``"C.1"`` < ``"C.5"`` < ``""`` (ours)."""
    if not paper_figure:
        return (2, "", ())
    match = re.fullmatch(r"([A-Z]*)\.?(\d+)(.*)", paper_figure)
    if not match:
        return (1, paper_figure, ())
    letter, number, rest = match.groups()
    return (1 if letter else 0, letter, (int(number), rest))


def figure_groups(stages):
    """``[(section, [(paper_figure, [FigureRecord, ...]), ...]), ...]``: sections in the paper's order, each with
    its figures grouped by paper figure in the paper's order (stage order within a figure; figures of ours last)."""
    sections = []
    for section in sorted({stage.section for stage in stages}, key=lambda s: (len(s), s)):
        by_figure = {}
        for stage in stages:
            if stage.section == section:
                for figure in stage.figures:
                    by_figure.setdefault(figure.paper_figure, []).append(figure)
        ordered = sorted(by_figure.items(), key=lambda item: figure_sort_key(item[0]))
        sections.append((section, ordered))
    return sections


def render_markdown(report):
    """The report as Markdown; figures are linked by their paths relative to the report's folder."""
    lines = [f"# {TITLE}", "", *_summary_lines(report, markdown=True), "", INTERVAL_NOTE, "", "## Findings", ""]
    lines += [findings_lib.findings_table(report.findings) if report.findings else "No findings (no stage ran).", ""]
    if report.models:
        lines += ["## Models", "", "| model | source | sha256 | status | test accuracy | train time (s) |",
                  "| --- | --- | --- | --- | ---: | ---: |"]
        lines += [f"| {m.name} | {m.source} | {m.sha256 or 'n/a'} | {m.status} | {_maybe(m.accuracy, '.3f')} | "
                  f"{_maybe(m.train_seconds, '.0f')} |" for m in report.models]
        lines.append("")
    groups = dict(figure_groups(report.stages))
    for section, title in SECTION_TITLES.items():
        stages = [stage for stage in report.stages if stage.section == section]
        if not stages:
            continue
        lines += [f"## {title}", ""]
        for stage in stages:
            lines.append(f"- Stage `{stage.name}` ({stage.title}): {_status_text(stage)}")
        lines.append("")
        for finding in (f for stage in stages for f in stage.findings):
            lines.append(f"- **{finding.key}**: the paper: {finding.claim} Measured: {finding.quantity} = "
                         f"{_interval(finding)}: **{finding.verdict}**.{_reason_text(finding)}{_seeds_text(finding)}"
                         f"{_checks_text(finding)}")
        lines.append("")
        for paper_figure, figures in groups.get(section, []):
            for figure in figures:
                lines += [f"![{_figure_label(figure)}]({figure.path})", "", f"*{_caption_text(figure)}*", ""]
    closing = closing_note(report.findings)
    if closing:
        lines += [f"## {CHECKS_TITLE}", "", CHECKS_NOTE, "", *[f"- {line}" for line in closing], ""]
    return "\n".join(lines).rstrip() + "\n"


def closing_note(found):
    """Lines naming the CKA findings (those with checks) that survive the second measure and that clear the null,
    and those that do not; empty when no finding was checked."""
    lines = []
    for attribute, text, outcomes in (
            ("second_measure_verdict", "Second measure (Procrustes)",
             ((findings_lib.SURVIVES, "survive"), (findings_lib.DOES_NOT_SURVIVE, "do not survive"))),
            ("null_verdict", "Permutation null",
             ((findings_lib.CLEARS, "clear it"), (findings_lib.DOES_NOT_CLEAR, "do not clear it")))):
        checked = [finding for finding in found if getattr(finding, attribute) != findings_lib.NOT_CHECKED]
        if not checked:
            continue
        parts = []
        for verdict, words in outcomes:
            keys = [f"`{finding.key}`" for finding in checked if getattr(finding, attribute) == verdict]
            if keys:
                parts.append(f"{len(keys)} of {len(checked)} {words} ({', '.join(keys)})")
        lines.append(f"**{text}**: " + "; ".join(parts) + ".")
    return lines


def render_html(report, folder):
    """The report as one self-contained HTML page: figures read from ``folder`` (the report's folder) and
    embedded as base64 PNG; the panels of one paper figure side by side in a CSS grid."""
    counts = report.verdict_counts()
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{html.escape(TITLE)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(TITLE)}</h1>",
             "<section class='summary'>",
             "<div class='counts'>" + "".join(
                 f"<span class='badge {_css_class(verdict)}'>{counts[verdict]} {html.escape(verdict)}</span>"
                 for verdict in VERDICTS) + "</div><ul>"]
    parts += [f"<li>{_inline(line)}</li>" for line in _summary_lines(report, markdown=False)]
    parts += ["</ul></section>", f"<p class='note'>{_inline(INTERVAL_NOTE)}</p>", "<h2>Findings</h2>",
              _findings_html(report.findings)]
    if report.models:
        parts.append("<h2>Models</h2><table><tr><th>model</th><th>source</th><th>sha256</th><th>status</th>"
                     "<th>test accuracy</th><th>train time (s)</th></tr>")
        parts += [f"<tr><td>{html.escape(m.name)}</td><td><code>{html.escape(m.source)}</code></td>"
                  f"<td><code class='hash'>{html.escape(m.sha256 or 'n/a')}</code></td><td>{html.escape(m.status)}"
                  f"</td><td class='num'>{_maybe(m.accuracy, '.3f')}</td>"
                  f"<td class='num'>{_maybe(m.train_seconds, '.0f')}</td></tr>" for m in report.models]
        parts.append("</table>")
    groups = dict(figure_groups(report.stages))
    for section, title in SECTION_TITLES.items():
        stages = [stage for stage in report.stages if stage.section == section]
        if not stages:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2><ul class='stages'>")
        parts += [f"<li>Stage <code>{html.escape(stage.name)}</code> ({html.escape(stage.title)}): "
                  f"{_inline(_status_text(stage))}</li>" for stage in stages]
        parts.append("</ul>")
        section_findings = [f for stage in stages for f in stage.findings]
        if section_findings:
            parts.append(_findings_html(section_findings))
        for paper_figure, figures in groups.get(section, []):
            heading = f"Figure {paper_figure}" if paper_figure else "Further figures"
            parts.append(f"<h3>{html.escape(heading)}</h3><div class='grid{' one' if len(figures) == 1 else ''}'>")
            for figure in figures:
                parts.append(f"<figure><img alt='{html.escape(_figure_label(figure))}' "
                             f"src='{_data_uri(os.path.join(folder, figure.path))}'>"
                             f"<figcaption>{_inline(_caption_text(figure))}</figcaption></figure>")
            parts.append("</div>")
    closing = closing_note(report.findings)
    if closing:
        parts.append(f"<h2>{html.escape(CHECKS_TITLE)}</h2><p class='note'>{_inline(CHECKS_NOTE)}</p><ul>")
        parts += [f"<li>{_inline(line)}</li>" for line in closing]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary_lines(report, markdown):
    run, counts = report.run, report.verdict_counts()
    total = sum(counts.values())
    lines = [f"**Findings**: {counts[findings_lib.HOLDS]} of {total} hold, {counts[findings_lib.DOES_NOT_HOLD]} do "
             f"not hold, {counts[findings_lib.INCONCLUSIVE]} inconclusive."]
    at_init = [f"`{finding.key}`" for finding in report.findings if finding.holds_at_initialisation]
    if at_init:
        lines.append(f"**Hold at initialisation** (say nothing about learning): {len(at_init)} of {total} "
                     f"({', '.join(at_init)}).")
    seeds = sorted({len(finding.seeds) for finding in report.findings if finding.seeds})
    if seeds:
        lines.append(f"**Seeds**: every finding pooled over {' or '.join(map(str, seeds))} trained seeds.")
    if report.models:
        lines.append("**Models**: " + ", ".join(f"{m.name} (`{os.path.basename(m.source)}`)" for m in report.models)
                     + ".")
    lines.append(f"**Data**: `{run.dataset}`, split `{run.split}`; preset `{run.preset}`.")
    counted = [f"{stage.name} {stage.num_examples}" for stage in report.stages if stage.num_examples]
    if counted:
        lines.append("**Examples per stage**: " + ", ".join(counted) + ".")
    lines.append(f"**Hardware**: {run.hardware}.")
    done = sum(stage.status in ("ran", "reused") for stage in report.stages)
    lines.append(f"**Time**: {_duration(run.seconds)} for {len(report.stages)} stages ({done} done).")
    for figure, reason in run.skipped_figures:
        lines.append(f"**Figure {figure} skipped**: {reason}")
    if markdown:
        return [f"- {line}" for line in lines]
    return lines


def _findings_html(found):
    rows = ["<table class='findings'><tr><th>§</th><th>the paper's claim</th><th>what we measured</th>"
            "<th>value [95% CI]</th><th>per seed</th><th>at initialisation</th><th>verdict</th>"
            "<th>second measure</th><th>CKA vs null q95</th></tr>"]
    for finding in found:
        sign = ">" if finding.direction == "greater" else "<"
        rows.append(f"<tr><td>{html.escape(finding.section)}</td><td>{html.escape(finding.claim)}</td>"
                    f"<td>{html.escape(finding.quantity)} (claim: {sign} {_number(finding.threshold)})</td>"
                    f"<td class='num'>{html.escape(_interval(finding))}</td>"
                    f"<td class='num'>{html.escape(findings_lib.seeds_text(finding))}</td>"
                    f"<td class='{_css_class(finding.control_verdict)}'>"
                    f"{html.escape(findings_lib.control_text(finding))}</td>"
                    f"<td><span class='badge {_css_class(finding.verdict)}'>{html.escape(finding.verdict)}</span>"
                    + (f"<br><small>{html.escape(finding.reason)}</small>" if finding.reason else "") +
                    f"</td><td class='{_css_class(finding.second_measure_verdict)}'>"
                    f"{html.escape(findings_lib.second_measure_text(finding))}</td>"
                    f"<td class='{_css_class(finding.null_verdict)}'>{html.escape(findings_lib.null_text(finding))}"
                    "</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _reason_text(finding):
    """`` Why: ...`` for a finding that does not hold, else ``""``."""
    return f" Why: {finding.reason}." if finding.reason else ""


def _seeds_text(finding):
    """`` Per seed: ...; at initialisation: ...`` (the control), or ``""``."""
    parts = []
    if finding.seeds:
        parts.append(f" Per seed: {findings_lib.seeds_text(finding)}.")
    if finding.control is not None:
        parts.append(f" At initialisation: {findings_lib.control_text(finding)}.")
    return "".join(parts)


def _checks_text(finding):
    """`` Procrustes: ...; CKA null: ...`` for a checked finding, else ``""``."""
    if finding.second_measure is None and finding.null is None:
        return ""
    return (f" Second measure: {findings_lib.second_measure_text(finding)}. CKA compared "
            f"({finding.null.get('compared', '') if finding.null else ''}) vs its null q95: "
            f"{findings_lib.null_text(finding)}.")


def _status_text(stage):
    text = {"ran": f"ran in {_duration(stage.seconds)}", "reused": "reused (up to date)"}.get(stage.status,
                                                                                          stage.status)
    return f"{text}; {stage.note}" if stage.note else f"{text}."


def _figure_label(figure):
    return f"Figure {figure.paper_figure}" if figure.paper_figure else os.path.basename(figure.path)


def _caption_text(figure):
    """``Figure N (file): caption. Look for: ...``, or the file name alone for a figure without a description."""
    name = os.path.basename(figure.path)
    if not figure.caption:
        return name
    head = f"**Figure {figure.paper_figure}** ({name})" if figure.paper_figure else f"**{name}**"
    text = f"{head}: {figure.caption}"
    return f"{text} Look for: {figure.look_for}" if figure.look_for else text


def _interval(finding):
    return f"{_number(finding.value)} [{_number(finding.low)}, {_number(finding.high)}]"


def _number(value):
    return "n/a" if not math.isfinite(value) else f"{value:.3g}"


def _maybe(value, spec):
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _duration(seconds):
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _css_class(verdict):
    return verdict.replace(" ", "-")


def _inline(text):
    """HTML-escapes ``text`` and turns ``**bold**``, ``*italic*`` and ```code``` markers into tags."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"\*(.+?)\*", r"<em>\1</em>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _data_uri(path):
    with open(path, "rb") as handle:
        return "data:image/png;base64," + base64.b64encode(handle.read()).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1400px;margin:1em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}h3{margin:1em 0 .3em}
table{border-collapse:collapse;margin:.5em 0;font-size:90%}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top}th{background:#f4f4f4;text-align:left}td.num{text-align:right;white-space:nowrap}
.summary{background:#f7f9fc;border:1px solid #d8e0ea;border-radius:6px;padding:.6em 1em}.summary ul{margin:.3em 0}
.counts{margin:.2em 0 .4em}.badge{display:inline-block;border-radius:4px;padding:1px 8px;margin-right:6px;
font-weight:600;white-space:nowrap}.holds{background:#d9f2dd;color:#145a22}.does-not-hold{background:#f9d7d7;
color:#7a1616}.inconclusive{background:#fbefc8;color:#6b5200}
td.survives,td.clears{color:#145a22}td.does-not-survive,td.does-not-clear{color:#7a1616}.note{color:#555;font-size:90%}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px;align-items:start}
.grid.one{grid-template-columns:minmax(0,760px)}
figure{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:6px;background:#fff}
figure img{width:100%;height:auto}figcaption{font-size:85%;color:#333;margin-top:4px}
code.hash{font-size:75%;word-break:break-all}
"""
