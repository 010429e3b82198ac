"""The model card as HTML: the registry's markdown rendered, and nothing in it taken as markup."""

from __future__ import annotations

from fedchem.serve.markdown import markdown_html


def test_a_card_renders_headings_lists_tables_and_escapes_everything_else():
    card = "\n".join(
        [
            "# model v1",
            "",
            "Trained on **4** sites; see `fedchem registry`.",
            "",
            "- site-a: 10 molecules",
            "- <img src=x onerror=alert(1)>",
            "",
            "| task | what it measures |",
            "|---|---|",
            "| NR-AR | androgen <b>receptor</b> & more |",
        ]
    )
    html = markdown_html(card)
    assert html.splitlines()[0] == "<h1>model v1</h1>"
    assert "<p>Trained on <strong>4</strong> sites; see <code>fedchem registry</code>.</p>" in html
    assert "<li>&lt;img src=x onerror=alert(1)&gt;</li>" in html
    assert "<tr><th>task</th><th>what it measures</th></tr>" in html
    assert "<td>androgen &lt;b&gt;receptor&lt;/b&gt; &amp; more</td>" in html
    assert "<img" not in html and "<b>" not in html
