"""`text_similarity`: how close the rendered input is to the reference, a number in [0, 1].

Each metric comes from the library that defines it: BLEU from sacrebleu (sentence BLEU, its defaults),
GLEU and METEOR from nltk, ROUGE-1..5 and ROUGE-L F-measure from rouge-score (its defaults). GLEU and METEOR
get sacrebleu's 13a tokens, as BLEU does. `fuzzy_match` is difflib's ratio (2 x matched characters / both
lengths), the standard library's equal of rapidfuzz's `fuzz.ratio`, which is not a tunelab dependency.
`cosine` needs an embeddings model (OpenAI's text-embedding-3-large), which tunelab does not have."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable

from .base import NUMBER, Grader, GraderError, Sample, Spec, register
from .templates import Template

ROUGE_TYPES = {f"rouge_{n}": f"rouge{n}" for n in range(1, 6)} | {"rouge_l": "rougeL"}
METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", *ROUGE_TYPES)
NOT_HERE = {
    "cosine": "cosine similarity needs an embeddings model (OpenAI's text-embedding-3-large), which tunelab "
    "does not have; choose another metric"
}


def fuzzy_match(text: str, reference: str) -> float:
    return difflib.SequenceMatcher(None, text, reference).ratio()


def bleu(text: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(text, [reference]).score / 100


def tokens(text: str) -> list[str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(text).split()


def gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return sentence_gleu([tokens(reference)], tokens(text))


def meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return meteor_score([tokens(reference)], tokens(text))


@functools.cache
def wordnet_problem() -> str | None:
    """Why METEOR cannot run here (its synonyms come from WordNet, a separate nltk download), or None."""
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except LookupError:
        return "meteor needs nltk's WordNet data, not installed here (nltk.download('wordnet'))"
    return None


def rouge(kind: str) -> Callable[[str, str], float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([kind])
    return lambda text, reference: scorer.score(reference, text)[kind].fmeasure


def metric_function(name: str) -> Callable[[str, str], float]:
    if name in ROUGE_TYPES:
        return rouge(ROUGE_TYPES[name])
    return {"fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "meteor": meteor}[name]


class TextSimilarity(Grader):
    type = "text_similarity"

    def __init__(self, name: str, input: Template, reference: Template, metric: str, pass_threshold=None):
        super().__init__(name, pass_threshold)
        self.input, self.reference, self.metric = input, reference, metric
        self.measure = metric_function(metric)

    @classmethod
    def from_spec(cls, spec: Spec) -> TextSimilarity:
        metric = spec.required("evaluation_metric", str)
        if metric in NOT_HERE:
            raise GraderError(f"{spec.at('evaluation_metric')}: {NOT_HERE[metric]}")
        metric = spec.choice("evaluation_metric", METRICS)
        if metric == "meteor" and (problem := wordnet_problem()):
            raise GraderError(f"{spec.at('evaluation_metric')}: {problem}")
        return cls(
            name=spec.required("name", str),
            input=Template(spec.required("input", str), spec.at("input")),
            reference=Template(spec.required("reference", str), spec.at("reference")),
            metric=metric,
            pass_threshold=spec.optional("pass_threshold", NUMBER),
        )

    def grade_one(self, sample: Sample, item: dict) -> float:
        return self.measure(self.input.render(sample, item), self.reference.render(sample, item))


register(TextSimilarity)
