"""Instruction records → token ids and labels, with the loss on the response tokens only.

Two record shapes are accepted: Alpaca (``instruction``, optional ``input``, ``output``) and chat
(``messages``: a list of ``{"role", "content"}``). Both become chat messages; a tokenizer with a chat
template renders them with it, any other tokenizer (GPT-2) gets the plain Alpaca-style prompt of
:func:`plain_prompt`, the same for training and for generation. Labels are ``-100`` on every token the
model should not learn to produce (system and user turns, the template's markup before each reply), so
``CrossEntropyLoss`` ignores them.
"""

from typing import Any, Literal

from llm_course.errors import ConfigError

IGNORE_INDEX = -100  # the ignore_index of torch's cross entropy and of Hugging Face's causal-LM loss
LossOn = Literal["replies", "last_reply"]  # which assistant turns of a chat record are learned

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA_PROMPT = ALPACA_PREAMBLE + "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def load_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, flag: str = "--model.init_args.model_name_or_path"
) -> Any:
    """The tokenizer of ``name_or_path`` (through the asset resolver), with a pad token.

    The one loader for Module 6: the DataModule, the LightningModule and ``merge`` all call it, so they pad alike.
    A tokenizer without a pad token (GPT-2 and friends) pads with EOS: pads are masked out of attention and loss.
    """
    from transformers import AutoTokenizer

    from llm_course.assets import from_pretrained

    tokenizer = from_pretrained(AutoTokenizer, name_or_path, flag, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def to_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages of an Alpaca or chat record.

    Raises:
        ConfigError: the record has neither ``messages`` nor ``instruction`` + ``output``.
    """
    if record.get("messages"):
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if "instruction" in record and "output" in record:
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    raise ConfigError(
        f"instruction record with keys {sorted(record)}: expected Alpaca fields (instruction, input, output) "
        "or chat messages (messages: [{role, content}, ...])"
    )


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


PLAIN_HEADERS = {"user": "### Instruction:\n", "assistant": "### Response:\n"}  # the turns of the plain prompt


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """The conversation as one Alpaca-style prompt, ending where the reply starts (for models without a template).

    Leading system messages come first, each followed by a blank line, then Alpaca's preamble; every later turn is an
    ``### Instruction:`` (user) or ``### Response:`` (assistant) block, in order, and the text ends with an open
    ``### Response:``. So a lone user turn renders exactly as :data:`ALPACA_PROMPT`, the format Module 6 trains
    GPT-2 on, and a system message only prepends text to it. The system text goes *before* the preamble rather than
    replacing it: a model tuned on Alpaca keys on the preamble and the headers right before the instruction, and
    the preamble describes the format, which a system message (RAG's rules, a persona) usually does not.

    Raises:
        ConfigError: no user turn to answer (no messages, or the last one is not ``user``), a system message after
            the first turn, or a role other than system, user and assistant (such as ``tool``): the plain format
            has no markup for them, and a made-up one would be text the model never saw in training.
    """
    first_turn = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    for i, message in enumerate(messages[first_turn:], start=first_turn):
        if message["role"] not in PLAIN_HEADERS:
            where = " after the first turn" if message["role"] == "system" else ""
            raise ConfigError(
                f"messages[{i}] has role {message['role']!r}{where}: a tokenizer without a chat template gets a plain "
                "Alpaca-style prompt, which takes system messages first, then user and assistant turns; use a model "
                "with a chat template for other roles or layouts"
            )
    if first_turn == len(messages) or messages[-1]["role"] != "user":
        last = repr(messages[-1]["role"]) if messages else "none (no messages)"
        raise ConfigError(f"the last message's role is {last}: a prompt must end with a user turn to answer")
    system = "".join(m["content"] + "\n\n" for m in messages[:first_turn])
    turns = "".join(PLAIN_HEADERS[m["role"]] + m["content"] + "\n\n" for m in messages[first_turn:])
    return system + ALPACA_PREAMBLE + "\n\n" + turns + PLAIN_HEADERS["assistant"]


def plain_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Prompt and response of a chat record in the plain format: the prompt is :func:`plain_prompt` of every message
    but the last (earlier replies included, so they are masked), the response is the last reply and EOS.

    Raises:
        ConfigError: the last message is not an ``assistant`` reply to learn, or :func:`plain_prompt` refuses the rest.
    """
    if not messages or messages[-1]["role"] != "assistant":
        last = repr(messages[-1]["role"]) if messages else "none (no messages)"
        raise ConfigError(f"a chat record's last message has role {last}: training needs an 'assistant' reply last")
    return [(plain_prompt(messages[:-1]), False), (messages[-1]["content"] + (tokenizer.eos_token or ""), True)]


def prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text a model continues to answer the last user turn (for generation).

    Raises:
        ConfigError: the tokenizer has no chat template and :func:`plain_prompt` cannot render ``messages``.
    """
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return plain_prompt(messages)


def _lacks_bos(tokenizer: Any, ids: list[int]) -> bool:
    """Whether the tokenizer wants a BOS in front and ``ids`` do not start with it.

    Chat templates such as Llama-2's render the BOS themselves; adding another would double it.
    """
    bos = tokenizer.bos_token_id
    return bool(getattr(tokenizer, "add_bos_token", False)) and bos is not None and ids[:1] != [bos]


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with a BOS in front where the tokenizer wants one and the text lacks it."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids] if _lacks_bos(tokenizer, ids) else ids


def alpaca_segments(tokenizer: Any, record: dict[str, Any]) -> list[tuple[str, bool]]:
    """Prompt and response of a record in the plain format (for tokenizers without a chat template).

    An Alpaca record with an ``input`` keeps Alpaca's own input prompt (generation never builds one: chat messages
    have no input field); every other record goes through :func:`plain_segments`, as generation does.
    """
    if record.get("input") and not record.get("messages"):  # to_messages() gives messages precedence too
        prompt = ALPACA_PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=record["input"])
        return [(prompt, False), (record["output"] + (tokenizer.eos_token or ""), True)]
    return plain_segments(tokenizer, to_messages(record))


def segments(tokenizer: Any, messages: list[dict[str, str]], loss_on: LossOn = "replies") -> list[tuple[str, bool]]:
    """Split the rendered conversation into ``(text, is_response)`` pieces that concatenate to the whole.

    Each prefix of the conversation is rendered with the chat template and the new text is attributed to
    its turn; a reply's markup (``<|im_start|>assistant\\n``) counts as prompt, its content and end-of-turn
    token as response. The tokenizer's EOS ends the last reply (added when the template does not). With
    ``loss_on="last_reply"`` only the final message counts as response: earlier replies (few-shot examples, a
    tool call already made) are context, as in the plain format.
    """
    eos = tokenizer.eos_token or ""

    def render(msgs: list[dict[str, str]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=generation, tokenize=False)

    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            prompt = render(messages[:i], generation=True)
            pieces.append((_extend(done, prompt), False))
            done = prompt
        text = render(messages[: i + 1])
        learned = msg["role"] == "assistant" and (loss_on == "replies" or i == len(messages) - 1)
        pieces.append((_extend(done, text), learned))
        done = text
    text, is_response = pieces[-1]
    if is_response and eos:  # end exactly on EOS: no trailing newline to learn, EOS added if missing
        cut = text.rfind(eos)
        pieces[-1] = (text[: cut + len(eos)] if cut >= 0 and not text[cut + len(eos) :].strip() else text + eos, True)
    return pieces


def _extend(done: str, text: str) -> str:
    if not text.startswith(done):
        raise ConfigError("the chat template does not render conversations prefix by prefix; cannot mask the prompt")
    return text[len(done) :]


def tokenize_record(tokenizer: Any, record: dict[str, Any], max_length: int,
                    loss_on: LossOn = "replies") -> dict[str, list[int]]:  # fmt: skip
    """``input_ids``, ``attention_mask`` and ``labels`` (``-100`` outside responses), cut to ``max_length``.

    Each piece is tokenized on its own, so the prompt/response boundary falls exactly between tokens. ``loss_on``:
    with a chat template, learn every assistant reply or only the last (without one, only the last is learned).
    """
    messages = to_messages(record)  # validates the record
    if has_chat_template(tokenizer):
        pieces = segments(tokenizer, messages, loss_on)
    else:
        pieces = alpaca_segments(tokenizer, record)
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_response in pieces:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if is_response else [IGNORE_INDEX] * len(ids)
    if _lacks_bos(tokenizer, input_ids):  # the same rule as encode() for generation
        input_ids, labels = [tokenizer.bos_token_id, *input_ids], [IGNORE_INDEX, *labels]
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
