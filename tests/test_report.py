"""vitcnn_tf.report: Markdown and HTML rendered from hand-built findings and stage records."""

import re

import numpy as np
import pytest
from matplotlib.figure import Figure

from vitcnn_tf import atomic_io, report
from vitcnn_tf.findings import Finding


def _finding(key, section, low, high):
    return Finding(key, section, f"claim of {key}.", f"quantity of {key}", (low + high) / 2, low, high)


def _png(path, seed):
    figure = Figure(figsize=(1, 1))
    figure.add_subplot().plot(np.random.default_rng(seed).normal(size=5))
    atomic_io.save_figure(figure, str(path))


@pytest.fixture
def built(tmp_path):
    """A report of three stages (sections 4, 5 and a skipped 7) whose figures are listed out of the paper's order."""
    for stage, names in {"s4": ["cross_resnet_mixer.png", "within_vit.png", "within_resnet.png", "extra.png"],
                         "s5": ["heads.png"]}.items():
        (tmp_path / stage).mkdir()
        for index, name in enumerate(names):
            _png(tmp_path / stage / name, index)
    s4 = report.StageRecord(
        "s4", "4", "Representation structure", "ran", seconds=75.0, num_examples=2000,
        findings=(_finding("a_holds", "4", 0.2, 0.4), _finding("b_not", "4", -0.3, -0.1)),
        figures=(report.FigureRecord("s4/cross_resnet_mixer.png", "H", "ResNet against Mixer.", "stages"),
                 report.FigureRecord("s4/extra.png"),
                 report.FigureRecord("s4/within_resnet.png", "1", "ResNet within-model CKA.", "clear stages"),
                 report.FigureRecord("s4/within_vit.png", "1", "ViT within-model CKA.", "a uniform grid")))
    s5 = report.StageRecord("s5", "5", "Attention distances", "reused", num_examples=5000,
                            findings=(_finding("c_open", "5", -0.1, 0.1),),
                            figures=(report.FigureRecord("s5/heads.png", "3", "Head distances.", "local heads"),))
    s7 = report.StageRecord("s7", "7", "Localization", "skipped", note="missing gap.npz")
    run = report.RunInfo("paper", "imagenet2012", "validation", "AMD EPYC, 2 CPUs; no GPU", 4000.0,
                         skipped_figures=(("8", "no public no-skip ViTs"),))
    models = (report.ModelRecord("vit_b16", "/ckpt/ViT-B_16.npz", sha256="ab" * 32),
              report.ModelRecord("vit", "zoo recipe vit", sha256="cd" * 32, status="trained", accuracy=0.81,
                                 train_seconds=120.0))
    return report.Report(run, (s4, s5, s7), models), tmp_path


def test_figures_follow_the_paper_order_within_each_section(built):
    rendered, _ = built
    groups = report.figure_groups(rendered.stages)
    assert [section for section, _ in groups] == ["4", "5", "7"]
    section4 = [(figure, [f.path for f in figures]) for figure, figures in groups[0][1]]
    assert section4 == [("1", ["s4/within_resnet.png", "s4/within_vit.png"]), ("H", ["s4/cross_resnet_mixer.png"]),
                        ("", ["s4/extra.png"])]
    ordered = sorted(["C.1", "", "13", "2", "C.5", "1"], key=report.figure_sort_key)
    assert ordered == ["1", "2", "13", "C.1", "C.5", ""]


def test_markdown_header_counts_captions_and_order(built):
    rendered, _ = built
    markdown = report.render_markdown(rendered)
    assert "- **Findings**: 1 of 3 hold, 1 do not hold, 1 inconclusive." in markdown
    assert "`imagenet2012`, split `validation`" in markdown
    assert "**Examples per stage**: s4 2000, s5 5000." in markdown
    assert "**Hardware**: AMD EPYC, 2 CPUs; no GPU." in markdown and "**Time**: 66.7 min for 3 stages (2 done)" \
        in markdown
    assert "**Figure 8 skipped**: no public no-skip ViTs" in markdown
    # Section 4 opens with Figure 1 (the within-model maps), the figure of ours last, captioned with its file name
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert images == ["s4/within_resnet.png", "s4/within_vit.png", "s4/cross_resnet_mixer.png", "s4/extra.png",
                      "s5/heads.png"]
    assert "*Figure 1 (within_vit.png): ViT within-model CKA. Look for: a uniform grid*" in markdown.replace("**", "")
    assert "*extra.png*" in markdown
    # the paper's claim beside our verdict; statuses; model table with "loaded" and "trained"
    assert "- **b_not**: the paper: claim of b_not. Measured: quantity of b_not = -0.2 [-0.3, -0.1]: " \
           "**does not hold**." in markdown
    assert "Stage `s5` (Attention distances): reused (up to date)." in markdown
    assert "Stage `s7` (Localization): skipped; missing gap.npz" in markdown
    assert f"| vit_b16 | /ckpt/ViT-B_16.npz | {'ab' * 32} | loaded |" in markdown
    assert "| vit | zoo recipe vit | " + "cd" * 32 + " | trained | 0.810 | 120 |" in markdown
    assert "cached" not in markdown


def test_html_embeds_figures_in_grids_with_captions(built):
    rendered, folder = built
    page = report.render_html(rendered, str(folder))
    assert page.count("data:image/png;base64,") == 5
    assert page.count("<div class='grid'>") == 1 and page.count("<div class='grid one'>") == 3  # Figure 1 has 2
    first_grid = page[page.index("<h3>Figure 1</h3>"):page.index("<h3>Figure H</h3>")]
    assert first_grid.count("<figure>") == 2 and "<b>Figure 1</b> (within_resnet.png)" in first_grid
    assert page.index("Section 4") < page.index("<h3>Figure 1</h3>") < page.index("<h3>Figure H</h3>") \
        < page.index("Further figures") < page.index("<h3>Figure 3</h3>")
    assert "<span class='badge holds'>1 holds</span>" in page
    assert "<figcaption>extra.png</figcaption>" in page
    assert "grid-template-columns" in page


def test_checks_of_cka_findings_in_the_tables_and_the_closing_note(built):
    rendered, folder = built
    stage = rendered.stages[0]
    checks = {"a_holds": (0.3, 0.6, 0.2), "b_not": (0.1, 0.05, 0.2)}  # second measure, compared CKA, null level
    found = tuple(Finding(f.key, f.section, f.claim, f.quantity, f.value, f.low, f.high,
                          second_measure={"measure": "procrustes", "value": checks[f.key][0], "num_examples": 64},
                          null={"compared": f"cka of {f.key}", "value": checks[f.key][1],
                                "null_q95": checks[f.key][2], "p_value": 0.5})
                  for f in stage.findings)
    rendered = report.Report(rendered.run, (report.StageRecord(stage.name, stage.section, stage.title, stage.status,
                                                               findings=found), *rendered.stages[1:]),
                             rendered.models)
    markdown = report.render_markdown(rendered)
    assert "| **holds** | procrustes 0.3: survives | 0.6 vs 0.2 (p 0.5): clears |" in markdown
    # a finding that does not hold gives its reason beside the verdict
    assert re.search(r"\| \*\*does not hold\*\*: the interval \[[^]]+\] is on the wrong side of the threshold "
                     r"\(claim: [<>] [^)]+\) \| procrustes 0.1: survives \| 0.05 vs 0.2 \(p 0.5\): does not clear \|",
                     markdown)
    assert re.search(r"\| \*\*inconclusive\*\*: the interval \[[^]]+\] straddles the threshold \(claim: [<>] [^)]+\) "
                     r"\| not checked \| not checked \|", markdown)  # c_open rests on no similarity measure
    closing = markdown[markdown.index("## Checks beyond CKA"):]
    assert "- **Second measure (Procrustes)**: 2 of 2 survive (`a_holds`, `b_not`)." in closing
    assert "- **Permutation null**: 1 of 2 clear it (`a_holds`); 1 of 2 do not clear it (`b_not`)." in closing
    assert "CKA compared (cka of b_not) vs its null q95: 0.05 vs 0.2 (p 0.5): does not clear." in markdown
    page = report.render_html(rendered, str(folder))
    assert "<th>second measure</th><th>CKA vs null q95</th>" in page
    assert "<td class='does-not-clear'>0.05 vs 0.2 (p 0.5): does not clear</td>" in page
    assert "<h2>Checks beyond CKA</h2>" in page and "1 of 2 do not clear it (<code>b_not</code>)" in page
    assert "Checks beyond CKA" not in report.render_markdown(built[0])  # nothing checked: no closing note


def test_missing_figure_file_is_an_error_naming_it(built, tmp_path):
    rendered, folder = built
    (folder / "s5" / "heads.png").unlink()
    with pytest.raises(FileNotFoundError, match="heads.png"):
        report.render_html(rendered, str(folder))
