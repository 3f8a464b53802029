"""The offline simulated model's text: deterministic, on the prompt's topic, split like tokens.

`compose(prompt, system)` is the whole reply: its generator is seeded from a hash of the system
prompt and the prompt, so the same input always gives the same text. A prompt that asks for
"N questions" gets a numbered list; anything else a few sentences built from the prompt's own
words (its `Topic:` line when it has one) and a few generic angles. `tokens` cuts a text the way a
subword tokenizer would, for the pacing of `SimulatedLLM.stream`.
"""

from __future__ import annotations

import hashlib
import random
import re

__all__ = ["compose", "rng_for", "tokens"]

_STOPWORDS_TEXT = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself just
    list me more most my no nor not now of off on once only or other our out over own please
    same she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why will
    with would you your yours give write answer reply short brief one two three four five six
    seven eight nine ten using based following question questions research topic findings
    summary summarize summarise report explain tell make new per each into given affect affects
    change changes help helps use used uses like get gets know want need needs look looks way
    together cover covers line lines numbered concise concrete facts figures careful deeper
    found far synthesizing synthesize follow-up goes go assistant user conversation hello hi
    thanks thank okay yes sure really much many something anything describe say said talk
    compare versus poem
"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

# Angles any subject has: what a question or a paragraph can be about when the prompt says little.
_ASPECTS = (
    "costs",
    "safety",
    "regulation",
    "adoption",
    "the evidence base",
    "day-to-day practice",
    "access and equity",
    "data quality",
    "the workforce",
    "long-term outcomes",
)

_QUESTION_FORMS = (
    "What is the current state of {t}?",
    "How does {t} affect {x}?",
    "What measurable outcomes has {t} produced so far?",
    "Which risks and limitations of {t} matter most for {x}?",
    "Who are the main actors shaping {t}, and what are they betting on?",
    "What evidence compares {t} with conventional approaches to {x}?",
    "How much does {t} cost, and who bears that cost?",
    "What will {t} look like in five years?",
    "Which open problems block wider adoption of {t}?",
    "How do regulation and policy constrain {t}?",
    "What do practitioners report about {t} in day-to-day work?",
    "Where has {t} failed, and what was learned?",
    "How does {x} change the economics of {t}?",
    "What data does {t} depend on, and how reliable is it?",
    "Which communities benefit least from {t}?",
    "What would change the consensus on {t} and {x}?",
)

_SENTENCE_FORMS = (
    "{T} is increasingly shaped by {x}, and most recent work treats the two together.",
    "Studies of {t} report gains of {n}% on measures tied to {x}.",
    "The strongest evidence on {t} comes from deployments where {x} was measured before and after.",
    "Critics point out that {t} depends heavily on {x}, which is uneven across settings.",
    "In practice, {t} changes who does the work more than how much work there is.",
    "Costs associated with {t} fell by roughly {n}% over the last few years, largely through {x}.",
    "The open question is whether gains in {x} hold up outside the pilots that made {t} look good.",
    "Teams working on {t} tend to underestimate the effort needed for {x}.",
    "Compared with older approaches, {t} is faster but harder to audit.",
    "Regulators increasingly ask how {t} handles {x}, and the answers are still forming.",
    "About {n} in 100 organisations surveyed report some use of {t}, often alongside {x}.",
    "The most cited setback for {t} came from ignoring {x}.",
    "Taken together, the findings on {t} and {x} point to steady rather than sudden change.",
    "Where {x} is weak, the benefits of {t} shrink considerably.",
    "Early results on {x} are promising, but sample sizes remain small.",
)

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'+-]*")
_ASK_QUESTIONS = re.compile(r"\b(\d{1,2})\s+(?:[\w-]+\s+){0,2}questions\b", re.IGNORECASE)
_TOPIC_LINE = re.compile(r"^\s*topic\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def _keywords(text: str) -> list[str]:
    """Content words by frequency (first appearance breaks ties); acronyms keep their case."""
    counts: dict[str, int] = {}
    for word in _WORD.findall(text):
        low = word.lower().strip("'-")
        if word.isupper() and 2 <= len(word) <= 6:
            key = word  # AI, GDPR
        elif len(low) >= 4 and low not in _STOPWORDS and not low.isdigit():
            key = low
        else:
            continue
        counts[key] = counts.get(key, 0) + 1
    order = {w: i for i, w in enumerate(counts)}
    return sorted(counts, key=lambda w: (-counts[w], order[w]))


def _subject(prompt: str) -> tuple[str, list[str]]:
    """(the prompt's subject, other terms worth mentioning)."""
    match = _TOPIC_LINE.search(prompt)
    if match:
        topic = match.group(1).strip().rstrip(".")[:120]
        rest = prompt[: match.start()] + prompt[match.end() :]
        topic_words = {w.lower() for w in _WORD.findall(topic)}
        terms = [w for w in _keywords(rest) if w.lower() not in topic_words]
        return topic, terms[:6]
    words = _keywords(prompt)
    if not words:
        return "this", []
    return " and ".join(words[:2]), words[2:8]


def tokens(text: str, rng: random.Random) -> list[str]:
    """Split like a subword tokenizer would: words with their leading space, long words in two."""
    out: list[str] = []
    for line_no, line in enumerate(text.split("\n")):
        if line_no:
            out.append("\n")
        for i, word in enumerate(line.split(" ")):
            piece = word if i == 0 else " " + word
            if len(word) > 8 and rng.random() < 0.5:
                cut = len(piece) - len(word) + rng.randint(3, len(word) - 3)
                out.extend((piece[:cut], piece[cut:]))
            elif piece:
                out.append(piece)
    return out


def rng_for(prompt: str, system: str | None) -> random.Random:
    digest = hashlib.sha256(f"{system or ''}\x00{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def compose(prompt: str, system: str | None = None) -> str:
    """The full reply to `prompt`."""
    rng = rng_for(prompt, system)
    topic, terms = _subject(prompt)
    asked = _ASK_QUESTIONS.search(prompt)
    if asked:
        return _questions(rng, int(asked.group(1)), topic, terms)
    return _prose(rng, topic, terms)


def _angle(rng: random.Random, terms: list[str]) -> str:
    """A term from the prompt about two times in three, else a generic aspect."""
    if terms and rng.random() < 0.65:
        return rng.choice(terms)
    return rng.choice(_ASPECTS)


def _questions(rng: random.Random, n: int, topic: str, terms: list[str]) -> str:
    forms = list(_QUESTION_FORMS)
    rng.shuffle(forms)
    lines = []
    for i in range(max(1, min(n, 20))):
        question = forms[i % len(forms)].format(t=topic, x=_angle(rng, terms))
        lines.append(f"{i + 1}. {question}")
    return "\n".join(lines)


def _prose(rng: random.Random, topic: str, terms: list[str]) -> str:
    forms = list(_SENTENCE_FORMS)
    rng.shuffle(forms)
    sentences = []
    for form in forms[: rng.randint(3, 6)]:
        x = _angle(rng, terms)
        t = topic
        sentences.append(form.format(t=t, T=t[:1].upper() + t[1:], x=x, n=rng.randint(12, 60)))
    return " ".join(sentences)
