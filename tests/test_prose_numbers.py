"""Every number a notebook's prose states is one its stored outputs print, or a marked quotation.

The rule: a measurement-like number in a markdown cell (a decimal such as 0.07, a percentage such
as 92.6%, a number with thousands separators such as 7,850, a multiplier such as 1.8x, any other
whole number of 100 or more, and "1.2 million" or "25M") must appear in the same notebook's
stored text outputs, where the prose may round: "92.6%" matches a printed "92.64%", "7,850"
matches "7850", "1.2 million" matches "1,199,882". A percentage only matches a printed percentage,
and a plain number a printed plain number (0.05 is not 0.05%; 92.6% is not 0.926).
So a re-run that changes a result cannot leave stale prose behind: the test fails until the prose
is brought in line.

Numbers that are not this notebook's measurements (the source text's, a paper's) are QUOTED: put
them inside double quotation marks, with the quote's origin named beside it (the source's "~0.2%",
LeCun et al. report "0.95%"), or inside a `>` blockquote. Quotation marks are for such quotes only:
never put this run's numbers in them.

Not checked: inline code, code blocks, LaTeX, URLs and link targets, shapes such as 28×28, years
(1950-2030), whole numbers below 100 (notebook and section numbers, list numbering, "5 epochs")
and numbers that are part of a name (ResNet-50, EfficientNet-B0, the 2000s).
"""

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))

_SCALES = {"million": Decimal(10) ** 6, "m": Decimal(10) ** 6, "billion": Decimal(10) ** 9}
# a number: 7,850 or 7850, maybe .25, maybe e-06; then maybe %, x/×, million/M/billion
_NUMBER = r"""
    (?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?(?:e(?P<exp>[-+]?\d+))?
    (?P<suffix>\s?%|\s?[x×]|[\s-]million|\s?M(?!\w)|\s?billion)?
"""
# in prose, not glued to a word, a name (ResNet-50) or another number, and not followed by letters (2000s)
PROSE_NUMBER = re.compile(r"(?<![\w.,/])(?<![A-Za-z]-)" + _NUMBER + r"(?![\w])", re.X)
# in outputs, anything that is not the tail of a word or a hash (small-cnn-b3601d1dc3)
OUTPUT_NUMBER = re.compile(r"(?<![\w.])" + _NUMBER, re.X)
SHAPE = re.compile(r"\d[\d,]*(?:\s?[×x]\s?\d[\d,]*)+(?![\w.])")  # 28×28, (3, 224, 224) stays
RANGE = re.compile(r"\s?[–-]\s?")  # the dash of 5.7–8.2%

# spans of markdown that are not prose
NOT_PROSE = [
    re.compile(r"```.*?```", re.S),  # code blocks
    re.compile(r"`[^`]*`"),  # inline code
    re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S),  # LaTeX
    re.compile(r"\]\([^)]*\)"),  # link and image targets
    re.compile(r"https?://\S+"),  # bare URLs
    re.compile(r"</?[A-Za-z][^>\n]*>"),  # HTML tags and their attributes (not "p < 0.05 ... >")
]
FIGURE = re.compile(r"<Figure size [^>]*>")  # an output's "<Figure size 800x450 with 1 Axes>" is no result
QUOTE = re.compile(r'"(?:[^"\n]|\n(?![ \t]*\n))*"|“[^”]*”')  # "...", within one paragraph
BLOCKQUOTE = re.compile(r"^[ \t]*>.*$", re.M)


@dataclass(frozen=True)
class Number:
    """A number as written: its value, the step of its last digit, and whether it is a percentage."""

    value: Decimal
    step: Decimal
    percent: bool
    text: str
    start: int = 0

    def rounds_from(self, printed: "Number") -> bool:
        """True when this number is `printed`, perhaps rounded to fewer digits."""
        if self.percent != printed.percent:
            return False
        return printed.step <= self.step and abs(printed.value - self.value) * 2 <= self.step


def parse(match: re.Match) -> Number:
    """The Number a regex match of _NUMBER stands for."""
    digits = match["int"].replace(",", "") + (match["frac"] or "")
    decimals = len(match["frac"] or "") - 1 if match["frac"] else 0
    exponent = int(match["exp"] or 0)
    suffix = (match["suffix"] or "").strip(" -").lower()
    scale = _SCALES.get(suffix, Decimal(1)) * Decimal(10) ** exponent
    return Number(Decimal(digits) * scale, Decimal(10) ** -decimals * scale, suffix == "%",
                  match.group().strip(), match.start())


def blank(text: str, pattern: re.Pattern) -> str:
    """text with every match of pattern replaced by spaces (so positions keep their meaning)."""
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)


def is_checked(n: Number) -> bool:
    """Measurement-like: a decimal, a percentage, a scaled or separated number, a whole number >= 100 but not a year."""
    if n.percent or n.step != 1 or "," in n.text:
        return True
    return n.value >= 100 and not (1950 <= n.value <= 2030 and n.text.isdigit())


def prose_numbers(markdown: str) -> list[tuple[Number, bool]]:
    """Each checked number of a markdown cell, with whether it stands inside a quotation."""
    text = markdown
    for pattern in NOT_PROSE:
        text = blank(text, pattern)
    text = blank(text, SHAPE)
    quoted = [m.span() for m in QUOTE.finditer(text)] + [m.span() for m in BLOCKQUOTE.finditer(text)]
    numbers = [parse(m) for m in PROSE_NUMBER.finditer(text)]
    out = []
    for i, n in enumerate(numbers):
        following = numbers[i + 1] if i + 1 < len(numbers) else None
        between = text[n.start + len(n.text):following.start] if following else ""
        if following and following.percent and not n.percent and RANGE.fullmatch(between):
            n = Number(n.value, n.step, True, n.text + "%", n.start)  # 5.7–8.2%: both are percentages
        if is_checked(n):
            out.append((n, any(a <= n.start < b for a, b in quoted)))
    return out


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else value


def output_text(cell: dict) -> str:
    """The text a code cell's stored outputs show: stdout, text/plain, text/markdown and text/html
    (not stderr, where progress bars print their "100%")."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") != "stderr":
            parts.append(_text(out["text"]))
        for mime in ("text/plain", "text/markdown", "text/html"):
            if mime in out.get("data", {}):
                text = _text(out["data"][mime])
                parts.append(re.sub(r"<[^>]+>", " ", text) if mime == "text/html" else text)
    return FIGURE.sub(" ", "\n".join(parts))


def printed_numbers(nb: dict) -> list[Number]:
    """Every number any stored output of the notebook prints."""
    text = "\n".join(output_text(c) for c in nb["cells"] if c["cell_type"] == "code")
    return [parse(m) for m in OUTPUT_NUMBER.finditer(text)]


def unsupported_numbers(nb: dict) -> list[str]:
    """'cell N: NUMBER in "...context..."' for each prose number neither printed nor quoted."""
    printed = printed_numbers(nb)
    problems = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        source = _text(cell["source"])
        for n, quoted in prose_numbers(source):
            if quoted or any(n.rounds_from(p) for p in printed):
                continue
            context = " ".join(source[max(0, n.start - 60):n.start + len(n.text) + 40].split())
            problems.append(f"cell {index}: {n.text}  in  ...{context}...")
    return problems


def test_the_series_is_found():
    assert len(NOTEBOOKS) >= 10, f"expected the notebooks 00-09 in {ROOT / 'notebooks'}, found {len(NOTEBOOKS)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_prose_numbers_are_printed_or_quoted(path):
    problems = unsupported_numbers(json.loads(path.read_text(encoding="utf-8")))
    assert not problems, (
        f"{path.name}: {len(problems)} number(s) in the prose appear in no stored output and are not quoted "
        "(state the printed number, or quote the source/paper in double quotes):\n  " + "\n  ".join(problems))


def _notebook(markdown: str, *printed: str) -> dict:
    return {"cells": [{"cell_type": "markdown", "source": markdown},
                      {"cell_type": "code", "source": "", "outputs": [
                          {"output_type": "stream", "name": "stdout", "text": list(printed)}]}]}


def _flagged(markdown: str, *printed: str) -> list[str]:
    return [p.split("  in  ")[0].split(": ", 1)[1] for p in unsupported_numbers(_notebook(markdown, *printed))]


def test_the_checker_fails_stale_numbers_and_passes_printed_or_quoted_ones():
    printed = ("test accuracy 92.64%\n", "7850 parameters, 1,199,882 in all, p = 1.9e-06, 2.45x fewer, 0.926\n")
    # a stale measurement fails; the same measurement rounded from the output passes
    assert _flagged("The model reaches 92.7%.", *printed) == ["92.7%"]
    assert _flagged("The model reaches 92.6% (92.64% exactly), 2.4x fewer, 2.45× fewer, p = 1.9e-06.", *printed) == []
    # thousands separators and scale words, both ways; more digits than printed is not rounding
    assert _flagged("It has 7,850 parameters, 1.2 million in all, about 1.20M.", *printed) == []
    assert _flagged("It reaches 92.640%.", *printed) == ["92.640%"]
    # whole numbers, not digits inside them; a percentage is not a fraction
    assert _flagged("A 3.1% error, 785 weights, 26.4%.", "13.14% error, 7850 weights, 926.4") == ["3.1%", "785", "26.4%"]
    assert _flagged("That is 92.6%, sd 0.05.", "accuracy 0.926, sd 0.05%") == ["92.6%", "0.05"]
    assert _flagged("We trained 800 models.", "<Figure size 800x450 with 1 Axes>") == ["800"]
    # a quotation of the source passes; an unquoted number beside it, in the same sentence, fails
    assert _flagged('The source says "~0.2%" error; our model makes 0.25% error.', *printed) == ["0.25%"]
    assert _flagged("The source text says ~0.2% error.", *printed) == ["0.2%"]
    assert _flagged("The source text:\n\n> a 5× quality improvement, 10,000 vs 2,000 per million\n\nOurs: 3.5x.",
                    *printed) == ["3.5x"]
    assert _flagged("Cireşan et al. (2012) report “0.23%” with 35 networks.", *printed) == []
    assert _flagged('A 5" floppy.\n\nWe measured 0.25%, "a quote".', *printed) == ["0.25%"]  # quotes end with the paragraph
    # ranges carry their percent sign to both ends
    assert _flagged("between 5.7–8.2%", "5.7% and 8.2%") == []
    assert _flagged("between 5.7–8.2%", "5.7 and 8.2%") == ["5.7%"]


def test_the_checker_ignores_what_is_not_a_measurement():
    markdown = ("# 06 · notebook 05, section 3\n\n1. LeNet-5 (1998) and ResNet-50 on 224×224 images, the 2000s;\n"
                "2. p < 0.0001 and `lr=0.003` in code, $0.5 x$ in LaTeX, [a link](https://example.com/v1.25) and 10 epochs, 4× fewer.\n"
                "```python\nx = 12.5\n```\n")
    assert _flagged(markdown, "p < 0.0001") == []
    assert _flagged("if p < 0.05 the 1.5x gain > noise", "p < 0.05") == ["1.5x"]  # a < is not an HTML tag
