"""Extraction table: realistic model outputs -> (rule, extracted, correct, undecided).

Each row is one output from a reasoning VLM on a benchmark item. `None` for extracted means undecided. Rows are
grouped by the rule they exercise; adversarial rows (options listed/discussed, hypotheticals, negations,
several letters, articles) come with each rule.
"""

import pytest

from r1ov_jax.eval import score_answer

MC = ["3/11", "8/11", "6/11", "3/5"]  # gold B == "8/11"
MC_LABELLED = ["A. 3/11", "B. 8/11", "C. 6/11", "D. 3/5"]
CHEM = ["H2O", "CO2", "NaCl", "O2"]

THINK = (
    "<think>\nThe image shows a circle divided into 11 equal sectors. Looking at the figure, 8 sectors are "
    "shaded. Option A: 3/11 counts the unshaded ones. Option C: 6/11 is too small.\n</think>\n"
)

# fmt: off
CASES = [
    # ---- rule 1: last <answer> block wins over everything ------------------------------------------------------
    ("tag letter", THINK + "<answer>B</answer>", "B", MC, "answer_tag", "B", True),
    ("tag wins over earlier phrase", "<think>So the answer is A.</think><answer>B</answer>", "B", MC,
     "answer_tag", "B", True),
    ("tag wins over later phrase", "<answer>C</answer>\nActually, the answer is B.", "B", MC, "answer_tag", "C", False),
    ("last of several tags", "<answer>A</answer> hmm, on reflection <answer>B</answer>", "B", MC,
     "answer_tag", "B", True),
    ("tag with label and text", THINK + "<answer>(B) 8/11</answer>", "B", MC, "answer_tag", "B", True),
    ("tag with choice text only", THINK + "<answer>8/11</answer>", "B", MC, "answer_tag", "B", True),
    ("tag with phrase inside", "<answer>The correct option is B.</answer>", "B", MC, "answer_tag", "B", True),
    ("tag with boxed letter", "<answer>$\\boxed{B}$</answer>", "B", MC, "answer_tag", "B", True),
    ("tag two letters", "<answer>A, B</answer>", "B", MC, "answer_tag", "A,B", False),
    ("tag empty is undecided", "<think>the answer is B</think><answer> </answer>", "B", MC, "answer_tag", None, False),
    ("tag unreadable is undecided", "<answer>I cannot determine this from the image.</answer> The answer is B",
     "B", MC, "answer_tag", None, False),
    ("tag gold as choice text", "<answer>B</answer>", "8/11", MC, "answer_tag", "B", True),
    ("tag labelled choices", "<answer>8/11</answer>", "B", MC_LABELLED, "answer_tag", "B", True),
    ("tag free-form sentence", "<think>count</think><answer>There are 3 cubes.</answer>", "3", None,
     "answer_tag", "There are 3 cubes", True),
    ("tag free-form latex", "<answer>$\\frac{\\sqrt{3}}{2}$</answer>", "\\sqrt{3}/2", None, "answer_tag",
     "\\frac{\\sqrt{3}}{2}", True),
    ("tag free-form wrong", "<answer>4</answer>", "3", None, "answer_tag", "4", False),
    # ---- rule 2: latest explicit phrase or \boxed{} ------------------------------------------------------------
    ("phrase the answer is", THINK + "Therefore, the answer is B.", "B", MC, "phrase", "B", True),
    ("phrase correct option parenthesised", "Hence the correct option is (B) 8/11.", "B", MC, "phrase", "B", True),
    ("phrase bold Answer:", "Counting the shaded parts gives 8 of 11.\n\n**Answer:** B", "B", MC, "phrase", "B", True),
    ("phrase bold Answer outside colon", "**Answer**: D", "B", MC, "phrase", "D", False),
    ("phrase Final Answer heading", "### Final Answer\n\nB", "B", MC, "phrase", "B", True),
    ("phrase final answer next line", "So the final answer is:\n\n**(B)**", "B", MC, "phrase", "B", True),
    ("phrase correct answer is option", "The correct answer is option D.", "D", MC, "phrase", "D", True),
    ("phrase choice text", "The answer is 8/11.", "B", MC, "phrase", "B", True),
    ("phrase latest wins", "At first the answer is A. Re-checking the shading, the answer is B.", "B", MC,
     "phrase", "B", True),
    ("boxed after phrase wins", "The answer is A?\nRecounting: \\boxed{B}", "B", MC, "boxed", "B", True),
    ("phrase after boxed wins", "$\\boxed{C}$ was my first guess, but the final answer is B.", "B", MC,
     "phrase", "B", True),
    ("boxed text letter", "Final answer: $\\boxed{\\text{(B)}}$", "B", MC, "boxed", "B", True),
    ("boxed choice text", "The shaded fraction is $\\boxed{\\frac{8}{11}}$.", "B", MC, "boxed", "B", True),
    ("phrase several letters", "The answer is A and C.", "B", MC, "phrase", "A,C", False),
    ("boxed several letters", "\\boxed{B, D}", "B", MC, "boxed", "B,D", False),
    ("phrase letter not an option", "The answer is E.", "B", MC, "phrase", "E", False),
    ("phrase negation then but", "The answer is not A, but B.", "B", MC, "phrase", "B", True),
    ("hypothetical skipped", ("If the answer is A, the ratio would be 3/11, which contradicts the figure. "
                              "So the answer is B."), "B", MC, "phrase", "B", True),
    ("hypothetical last is skipped", "So the answer is B. But if the answer were A then 3 sectors...", "B", MC,
     "phrase", "B", True),
    ("letter-only gold without choices", "The length of BC is $\\sqrt{3}$, so the answer is C: $\\sqrt{3}$.",
     "C", None, "phrase", "C", True),
    ("chemistry text", "Burning carbon yields carbon dioxide, so the correct answer is CO2.", "B", CHEM,
     "phrase", "B", True),
    ("free-form number unit", "The final answer is 12 cm.", "12", None, "phrase", "12 cm", True),
    ("free-form unit conversion", "Answer: 0.12 m", "12 cm", None, "phrase", "0.12 m", True),
    ("free-form fraction vs decimal", "The answer is $\\frac{1}{2}$.", "0.5", None, "phrase", "\\frac{1}{2}", True),
    ("free-form decimal vs fraction", "Thus, the answer is 0.75.", "3/4", None, "phrase", "0.75", True),
    ("free-form clause cut", "After calculation, the final answer is 7, which is odd.", "7", None, "phrase",
     "7", True),
    ("free-form percent", "**Answer:** 50%", "0.5", None, "phrase", "50%", True),
    ("free-form tolerance", "The answer is 3.1416", "3.14", None, "phrase", "3.1416", True),
    ("free-form boxed surd", "Hence $AB = \\boxed{2\\sqrt{2}}$ units.", "\\sqrt{8}", None, "boxed", "2\\sqrt{2}", True),
    ("free-form degrees", "The final answer is $60^\\circ$.", "60", None, "phrase", "60^\\circ", True),
    ("free-form wrong number", "Therefore, the answer is 14.", "12", None, "phrase", "14", False),
    ("free-form check-whether skipped", "Let me check whether the answer is 5. Computing again gives \\boxed{6}",
     "6", None, "boxed", "6", True),
    ("free-form prose after phrase skipped", "The answer is 12.\nThe answer is clear from the figure as shown.",
     "12", None, "phrase", "12", True),
    # ---- rule 3: a bare answer ---------------------------------------------------------------------------------
    ("bare letter", "B", "B", MC, "bare", "B", True),
    ("bare parenthesised", "(B)", "B", MC, "bare", "B", True),
    ("bare bold letter with period", "**C.**", "B", MC, "bare", "C", False),
    ("bare letter and text", "B. 8/11", "B", MC, "bare", "B", True),
    ("bare choice text", "8/11", "B", MC, "bare", "B", True),
    ("bare number", "12", "12", None, "bare", "12", True),
    ("bare latex", "$\\frac{1}{2}$", "0.5", None, "bare", "\\frac{1}{2}", True),
    ("R1-Onevision style bare after think", "<think>Maybe the answer is A? No: 8 of 11 are shaded.</think>\n\nB",
     "B", MC, "bare", "B", True),
    ("R1-Onevision style phrase after think", "<think>So the answer is C.</think>\n\n**Answer:** B", "B", MC,
     "phrase", "B", True),
    ("after-think prose falls back to think", "<think>Hence the answer is B.</think>\nI hope this helps!", "B", MC,
     "phrase", "B", True),
    # ---- rule 4: nothing explicit -> undecided, never guessed --------------------------------------------------
    ("options listed only", "Option A: 3/11 is the unshaded part. Option B: 8/11 matches the shaded part.",
     "B", MC, "none", None, False),
    ("answer choices listed", "Answer choices: A. 3/11 B. 8/11 C. 6/11 D. 3/5\nLet me analyse each one.",
     "B", MC, "none", None, False),
    ("answer-colon listing", "Answer: A. 3/11 B. 8/11 C. 6/11 D. 3/5", "B", MC, "none", None, False),
    ("hedged letter", "I think it's probably B, but the image is blurry.", "B", MC, "none", None, False),
    ("article not option", "A right triangle is formed by the two radii.", "A", MC, "none", None, False),
    ("truncated tag", THINK + "<answer>B", "B", MC, "none", None, False),
    ("no phrase free-form", "The result of the computation is 12.", "12", None, "none", None, False),
    ("question about answer", "What is the answer? We need the area of the circle first.", "3", None,
     "none", None, False),
    ("empty output", "", "B", MC, "none", None, False),
    ("bare word free-form", "triangle", "3", None, "none", None, False),
]
# fmt: on


@pytest.mark.parametrize(
    "output, gold, choices, rule, extracted, correct", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_extraction_table(output, gold, choices, rule, extracted, correct):
    r = score_answer(output, gold, choices)
    assert r.rule == rule
    assert r.extracted == extracted
    assert r.correct is correct
    assert r.undecided is (extracted is None)
    if r.undecided:
        assert r.correct is False


def test_table_covers_every_rule_and_is_large():
    assert len(CASES) >= 40
    assert {c[4] for c in CASES} == {"answer_tag", "phrase", "boxed", "bare", "none"}
    assert len({c[0] for c in CASES}) == len(CASES)


def test_span_is_shown_for_display():
    r = score_answer("Thus the correct option is (B) 8/11.\nDone.", "B", MC)
    assert r.span == "(B) 8/11."
    assert score_answer("no idea", "B", MC).span is None
    assert set(r.to_dict()) == {"correct", "extracted", "undecided", "rule", "span"}
