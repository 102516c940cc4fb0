"""The plain Alpaca-style prompt of models without a chat template (GPT-2): generation, RAG and training share it."""


import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import byte_tokenizer
from llm_course.errors import ConfigError
from llm_course.inference.engine import GenerationEngine
from llm_course.inference.sampling import InvalidRequest, SamplingParams
from llm_course.rag.prompt import SYSTEM, grounded_messages
from llm_course.sft.prompts import (
    ALPACA_PROMPT,
    IGNORE_INDEX,
    plain_prompt,
    prompt_text,
    tokenize_record,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "and 3+3?"},
]


@pytest.fixture(scope="module")
def engine() -> GenerationEngine:
    tokenizer = byte_tokenizer(chat_template=None)  # offline, one token per byte, no chat template: like GPT-2
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=2048,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    return GenerationEngine(GPT2LMHeadModel(config), tokenizer)


def test_single_user_turn_renders_exactly_as_alpaca(engine):
    user = [{"role": "user", "content": "Say hi."}]
    assert plain_prompt(user) == prompt_text(engine.tokenizer, user) == ALPACA_PROMPT.format(instruction="Say hi.")
    with_system = [{"role": "system", "content": "Be brief."}, *user]
    assert plain_prompt(with_system) == "Be brief.\n\n" + ALPACA_PROMPT.format(instruction="Say hi.")


def test_system_history_and_question_stay_in_order():
    expected = (
        "Be brief.\n\n"
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n2+2?\n\n### Response:\n4\n\n### Instruction:\nand 3+3?\n\n### Response:\n"
    )
    assert plain_prompt(CHAT) == expected
    two_systems = [{"role": "system", "content": "Rule one."}, {"role": "system", "content": "Rule two."}, CHAT[1]]
    assert plain_prompt(two_systems).startswith("Rule one.\n\nRule two.\n\nBelow is an instruction")


def test_engine_prompt_ids_keep_the_whole_conversation(engine):
    ids = engine.prompt_ids(CHAT)
    text = engine.tokenizer.decode(ids)
    assert text == prompt_text(engine.tokenizer, CHAT)
    positions = [text.index(m["content"]) for m in CHAT]
    assert positions == sorted(positions) and text.endswith("and 3+3?\n\n### Response:\n")
    reply, stats = engine.generate(CHAT, SamplingParams(temperature=0, max_new_tokens=2))
    assert stats.prompt_tokens == len(ids) and isinstance(reply, str)


def test_rag_chat_keeps_its_instructions_and_passages(engine):
    messages = grounded_messages("What is x?", [(f"notes/0{n}.md#part", f"Passage number {n} says x.") for n in (1, 2)])
    text = engine.tokenizer.decode(engine.prompt_ids(messages))
    passages = [f"[{n}] (notes/0{n}.md#part)\nPassage number {n} says x." for n in (1, 2)]
    pieces = [SYSTEM, "### Instruction:\nContext passages:", *passages, "Question: What is x?", "### Response:\n"]
    positions = [text.index(p) for p in pieces]
    assert text.startswith(SYSTEM) and positions == sorted(positions) and text.endswith("### Response:\n")


def split_labels(example: dict[str, list[int]]) -> tuple[list[int], list[int]]:
    """The masked prefix and the learned rest of a tokenized example; fails unless the mask is one prefix."""
    ids, labels = example["input_ids"], example["labels"]
    n = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert labels[:n] == [IGNORE_INDEX] * n and labels[n:] == ids[n:]
    return ids[:n], ids[n:]


def test_training_masks_exactly_the_prompt_that_generation_builds(engine):
    tokenizer = engine.tokenizer
    for messages in (CHAT[:3], [*CHAT, {"role": "assistant", "content": "6"}]):  # [system, user, assistant], history
        example = tokenize_record(tokenizer, {"messages": messages}, max_length=2048)
        prompt, response = split_labels(example)
        assert prompt == engine.prompt_ids(messages[:-1])  # train/serve consistency, token for token
        assert tokenizer.decode(response) == messages[-1]["content"] + tokenizer.eos_token
    alpaca = tokenize_record(tokenizer, {"instruction": "Say hi.", "output": "Hello!"}, max_length=2048)
    assert split_labels(alpaca)[0] == engine.prompt_ids([{"role": "user", "content": "Say hi."}])


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([*CHAT[:3]], r"last message's role is 'assistant': a prompt must end with a user turn"),
        ([], r"last message's role is none \(no messages\)"),
        ([CHAT[0]], r"last message's role is 'system'"),
        ([CHAT[1], {"role": "tool", "content": "42"}, CHAT[3]], r"messages\[1\] has role 'tool': .*other roles"),
        ([CHAT[1], CHAT[2], CHAT[0], CHAT[3]], r"messages\[2\] has role 'system' after the first turn"),
    ],
)
def test_conversations_the_plain_prompt_cannot_render(engine, messages, match):
    with pytest.raises(ConfigError, match=match):
        plain_prompt(messages)
    with pytest.raises(InvalidRequest, match=match) as err:  # the API answers 400 and names the field
        engine.prompt_ids(messages)
    assert err.value.param == "messages"


def test_training_record_must_end_with_a_reply(engine):
    with pytest.raises(ConfigError, match=r"last message has role 'user': training needs an 'assistant' reply last"):
        tokenize_record(engine.tokenizer, {"messages": CHAT}, max_length=2048)
    record = {"messages": [CHAT[1], {"role": "tool", "content": "42"}, CHAT[3], CHAT[2]]}
    with pytest.raises(ConfigError, match=r"messages\[1\] has role 'tool'"):
        tokenize_record(engine.tokenizer, record, max_length=2048)
