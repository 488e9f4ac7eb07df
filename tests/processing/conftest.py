import pytest

from r1ov_jax.processing import train_sentencepiece
from r1ov_jax.processing.tokenizer import make_test_tokenizer

SP_CORPUS = [
    "You are a helpful assistant.",
    "Describe this image. The chart shows sales rising from 10 to 42 units between 2019 and 2023.",
    "A triangle ABC has sides 3, 4 and 5; what is its area?\nThe area is 6.",
    "<think>The bars are 4, 7 and 12, so the largest is plums.</think><answer>plums</answer>",
    "Hello world! How many objects are there in the scene? There are 3 red cubes and 2 spheres.",
    "  indented text\twith a tab and trailing spaces   ",
]


@pytest.fixture(scope="session")
def hf_tokenizer(tmp_path_factory):
    return make_test_tokenizer(tmp_path_factory.mktemp("hf_tok"))


@pytest.fixture(scope="session", params=["bpe", "unigram"])
def sp_tokenizer(request, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("sp_tok") / f"sp_{request.param}"
    return train_sentencepiece(SP_CORPUS * 3, prefix, vocab_size=420, model_type=request.param)
