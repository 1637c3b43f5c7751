"""llm_explanation parses a scripted decoder's answers into word scores and counts how each answer parsed."""

from __future__ import annotations

import numpy as np
import pytest

from amlx.methods import get
from amlx.methods.llm_explanation import parse_ranking, parse_rate
from tests.bow import bow_explained

TEXT = "good movie and bad plot"


class ScriptedDecoder:
    """Answers prompts from a script, in order, and keeps the prompts it was given."""

    def __init__(self, *answers: str) -> None:
        self.answers, self.prompts = list(answers), []

    def __call__(self, prompts: list[str]) -> list[str]:
        self.prompts += prompts
        return [self.answers.pop(0) for _ in prompts]


@pytest.fixture(scope="module")
def model():
    return bow_explained()


def word_score(rec, word: str) -> float:
    return float(rec.scores[rec.tokens.index(word)])


def explain(model, *answers: str, **options):
    decoder = ScriptedDecoder(*answers)
    recs = get("llm_explanation", decoder=decoder, **options).attribute([TEXT] * len(answers), model)
    return recs, decoder


def test_a_well_formed_answer_ranks_every_word(model):
    (rec,), _ = explain(model, "1. Bad\n2. plot\n3. good\n4. movie\n5. and")
    assert [word_score(rec, w) for w in ("bad", "plot", "good", "movie", "and")] == [5, 4, 3, 2, 1]
    assert rec.meta["llm_parse"] == "full" and rec.meta["llm_ranked_words"] == 5 == rec.meta["llm_words"]


def test_a_partial_answer_ranks_what_it_names_and_ties_the_rest_at_zero(model):
    (rec,), _ = explain(model, '"bad", "good", awful')  # "awful" is not in the text: skipped
    assert word_score(rec, "bad") == 2 and word_score(rec, "good") == 1
    assert word_score(rec, "movie") == word_score(rec, "and") == word_score(rec, "plot") == 0
    assert rec.meta["llm_parse"] == "partial" and rec.meta["llm_ranked_words"] == 2


@pytest.mark.parametrize("answer", ["I am sorry, I cannot help with that request!!", "", "   \n"])
def test_garbage_and_empty_answers_fall_back_to_all_zero_and_are_counted(model, answer):
    (rec,), _ = explain(model, answer)
    assert np.all(rec.scores == 0)
    assert rec.meta["llm_parse"] == "none" and rec.meta["llm_answer"] == answer


def test_parse_rate_counts_answers_that_ranked_a_word(model):
    recs, _ = explain(model, "bad, good", "garbage", "", "good, movie, and, bad, plot")
    assert [r.meta["llm_parse"] for r in recs] == ["partial", "none", "none", "full"]
    assert parse_rate(recs) == 0.5


def test_repeated_words_are_ranked_one_mention_at_a_time():
    words = ["Good", "good", "fun", "."]
    assert parse_ranking("good; GOOD, good, fun.", words) == [0, 1, 2]
    assert parse_ranking("- fun\n* good", words) == [2, 0]


def test_the_prompt_template_is_configurable_and_gets_task_label_and_text(model):
    template = "{task} | {label} | {text}"
    (rec,), decoder = explain(model, "good", template=template, task="TASK")
    assert decoder.prompts == [f"TASK | {rec.target_label} | {TEXT}"]
    with pytest.raises(ValueError, match="must contain"):
        get("llm_explanation", decoder=decoder, template="no text here")


def test_a_decoder_giving_the_wrong_number_of_answers_is_an_error(model):
    with pytest.raises(ValueError, match="gave 0 answers to 1 prompts"):
        get("llm_explanation", decoder=lambda prompts: []).attribute([TEXT], model)


def test_the_hugging_face_decoder_answers_every_prompt_of_a_padded_batch(tmp_path):
    from amlx.methods.llm_explanation import HFDecoder
    from tests.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("gpt2")
    tiny_model("gpt2", "prompted", tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    decoder = HFDecoder(str(tmp_path), max_new_tokens=3)
    batch = decoder(["A good movie.", "bad"])
    assert len(batch) == 2 and all(isinstance(a, str) for a in batch)
    assert decoder(["bad"]) == batch[1:]  # left padding: the short prompt's answer does not depend on its batch-mate
