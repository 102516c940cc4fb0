"""``llm-course agent`` and ``llm-course support``: the agent loop and the support desk in a terminal."""

import json as jsonlib
import sys
from typing import Any, Literal

from llm_course.agent.desk.help import INDEX_DIR as HELP_INDEX
from llm_course.agent.desk.orders import DEFAULT_DB
from llm_course.agent.desk.routing import ANGRY_THRESHOLD, MAX_OFF_TOPIC, MIN_SUPPORT, SIGNAL, Settings
from llm_course.errors import ConfigError
from llm_course.inference.engine import Weights

PolicyName = Literal["model", "keywords"]


def desk_parts(embedder: Any, classifier: str | None, db: str, help_index: str | None) -> tuple[Any, Any, Any]:
    """The help centre, the orders database (created on first use) and the sentiment classifier."""
    from llm_course.agent.desk.help import HelpCentre
    from llm_course.agent.desk.orders import Orders
    from llm_course.agent.desk.sentiment import load_sentiment

    return HelpCentre(embedder, index_dir=help_index), Orders(db), load_sentiment(classifier, embedder)


def model_policy(engine: Any, tools: list, intro: str, examples: list, constrained: bool, few_shot: bool,
                 max_new_tokens: int, narrow: Any = None) -> Any:  # fmt: skip
    """A :class:`~llm_course.agent.policy.ModelPolicy` on a loaded engine (the command's own, or the server's)."""
    from llm_course.agent.policy import ModelPolicy

    return ModelPolicy(engine, tools, intro, examples if few_shot else [], constrained, max_new_tokens, narrow)


def build_desk(policy: PolicyName = "model", engine: Any = None, constrained: bool = True, quote: bool = True,
               few_shot: bool = True, settings: Settings | None = None, classifier: str | None = None,
               db: str = DEFAULT_DB, help_index: str | None = HELP_INDEX) -> Any:  # fmt: skip
    """The support desk as ``llm-course support`` builds it: the help centre (indexed into ``help_index``), the
    orders database (created on first use), the sentiment classifier (``None``: the fallback head) and the policy:
    the keyword rules, or ``engine`` (a loaded :class:`~llm_course.inference.engine.GenerationEngine`, e.g. the
    server's: no second copy of the model) choosing the tool. Takes seconds: MiniLM, the help index, the fallback's
    fit and the call grammar.

    Raises:
        ConfigError: ``policy`` is model and there is no ``engine``.
    """
    from llm_course.agent.desk.desk import EXAMPLES, INTRO, SupportDesk, desk_tools, quote_message
    from llm_course.agent.desk.routing import KeywordDesk
    from llm_course.rag.index import load_embedder

    if policy == "model" and engine is None:
        raise ConfigError("the support desk's policy is 'model' but no model is loaded: pass one, or use keywords")
    help_centre, orders, sentiment = desk_parts(load_embedder("minilm"), classifier, db, help_index)
    if policy == "keywords":
        chooser: Any = KeywordDesk()
    else:
        tools = desk_tools(help_centre, orders)
        chooser = model_policy(engine, tools, INTRO, EXAMPLES, constrained, few_shot, 96,
                               quote_message(tools) if quote else None)  # fmt: skip
    return SupportDesk(help_centre, orders, sentiment, chooser, settings)


def agent(
    task: str,
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    weights: Weights = "fp32",
    policy: PolicyName = "model",
    constrained: bool = True,
    few_shot: bool = True,
    max_steps: int = 4,
    max_seconds: float = 60.0,
    tool_timeout: float = 10.0,
    notes: str | None = "notes",
    index_dir: str = "outputs/rag_index",
    classifier: str | None = None,
    db: str = DEFAULT_DB,
    help_index: str | None = HELP_INDEX,
    max_new_tokens: int = 96,
    json: bool = False,
    device: str = "auto",
) -> None:
    """Do a task with tools: the model calls search_notes, calculate, classify_sentiment, search_help,
    lookup_order or hand_over until it gives a final answer; each step is printed (tool, arguments, result, time).

    Args:
        task: what to do ("What is 17 * 23 + 4?", "What do the notes say about LoRA?").
        model: the chat model: smollm2-135m-instruct, a folder, a hub id, or a LoRA adapter folder.
        adapter: a LoRA adapter folder on top of --model.
        weights: fp32, bf16, int8 or nf4.
        policy: model (the chat model chooses the calls) or keywords (the keyword-rule baseline, no model).
        constrained: decode each call under the tools' JSON-schema grammar (false: free text, parsed after).
        few_shot: show the model a few example calls before the task.
        max_steps: most calls in the run.
        max_seconds: most seconds for the whole run.
        tool_timeout: most seconds for one tool call (a slower tool returns an error to the model).
        notes: the notes folder search_notes reads, re-indexed where it changed (none: the index as it is).
        index_dir: the notes' index folder (Module 8's).
        classifier: a Module 3 classifier for classify_sentiment: <run>/hf_model or an ONNX export folder (none: the
            desk's offline fallback).
        db: the support desk's orders database (created and seeded on first use).
        help_index: where the help centre's index is kept (none: built in memory).
        max_new_tokens: longest call the model may write.
        json: print the run (steps, answer, timings) as JSON.
        device: auto, cpu, cuda.
    """
    from llm_course.agent.builtin import EXAMPLES, INTRO, KeywordAgent, agent_tools
    from llm_course.agent.desk.desk import desk_tools
    from llm_course.agent.loop import run_agent
    from llm_course.agent.tools import ToolBox
    from llm_course.rag.answer import NotesQA
    from llm_course.rag.commands import open_index
    from llm_course.rag.retrieve import Retriever

    if not task.strip():
        raise ConfigError("--task is empty: say what the agent should do")
    index, embedder = open_index(notes, index_dir)
    help_centre, orders, sentiment = desk_parts(embedder, classifier, db, help_index)
    qa = NotesQA(Retriever(index, embedder), None, top_k=2, max_evidence=2)
    tools = agent_tools(qa, sentiment, desk_tools(help_centre, orders))
    if policy == "keywords":
        chooser: Any = KeywordAgent()
    else:
        from llm_course.inference.engine import GenerationEngine

        engine = GenerationEngine.load(model, adapter, weights, device)
        chooser = model_policy(engine, tools, INTRO, EXAMPLES, constrained, few_shot, max_new_tokens)
    toolbox = ToolBox(tools[:-1], tool_timeout)  # final_answer is the loop's, not a tool to run
    print(f"agent: {chooser.label}; tools: {', '.join(t.name for t in tools)}", file=sys.stderr)
    run = run_agent(task, chooser, toolbox, max_steps, max_seconds, None if json else lambda s: print(s.line()))
    if json:
        print(jsonlib.dumps(run.as_dict(), indent=2, default=str))
        return
    print(f"answer: {run.answer}")
    print(f"stopped: {run.stopped} after {len(run.steps)} steps, {run.seconds:.1f} s", file=sys.stderr)


def support(
    message: str,
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    weights: Weights = "fp32",
    policy: PolicyName = "model",
    constrained: bool = True,
    quote: bool = True,
    few_shot: bool = True,
    guards: bool = True,
    angry_threshold: float = ANGRY_THRESHOLD,
    min_support: float = MIN_SUPPORT,
    support_signal: Literal["dense", "coverage", "mean"] = SIGNAL,
    max_off_topic: float = MAX_OFF_TOPIC,
    angry_words: bool = True,
    classifier: str | None = None,
    db: str = DEFAULT_DB,
    help_index: str | None = HELP_INDEX,
    json: bool = False,
    device: str = "auto",
) -> None:
    """Answer one customer message at the support desk of a fictional shop: the sentiment and its confidence, the
    tool trace, a reply with citations of the help centre (or an order's status), or a hand-over to a person with a
    summary for them (angry customers, payment details, requests the help centre does not cover).

    Args:
        message: the customer's message.
        model: the chat model that chooses the tool (smollm2-135m-instruct, a folder, an adapter folder).
        adapter: a LoRA adapter folder on top of --model.
        weights: fp32, bf16, int8 or nf4.
        policy: model (the chat model chooses the tool) or keywords (the keyword-rule baseline, no model).
        constrained: decode the call under the tools' JSON-schema grammar.
        quote: with --constrained, the grammar also takes the arguments from the message (the query is the message,
            the order number one it names): the model only chooses the tool.
        few_shot: show the model a few example calls first.
        guards: apply the hand-over rules around the model (payment details, anger, help-centre support).
        angry_threshold: hand over when the classifier's anger (P(angry), or P(negative) for a two-label model) is
            at least this (chosen by bench agent).
        min_support: hand over a help-centre search whose support is below this (chosen by bench agent).
        support_signal: dense (the best cosine), coverage (IDF-weighted share of the words) or mean.
        max_off_topic: hand over a help-centre search when the scope head's P(not covered) is at least this
            (chosen by bench agent; above 1: off).
        angry_words: hand over messages with words no calm customer writes ("scam", "useless", "lawyer").
        classifier: a Module 3 classifier: <run>/hf_model, the run folder, or its ONNX export folder (none: the
            offline fallback, a logistic-regression head on MiniLM embeddings; the output names it).
        db: the orders database (SQLite; created and seeded with orders 1001-1100 on first use).
        help_index: where the help centre's index is kept (none: built in memory).
        json: print the result as JSON.
        device: auto, cpu, cuda.
    """
    if not message.strip():
        raise ConfigError("--message is empty: write the customer's message")
    engine = None
    if policy == "model":
        from llm_course.inference.engine import GenerationEngine

        engine = GenerationEngine.load(model, adapter, weights, device)
    settings = Settings(guards, angry_threshold, min_support, support_signal, max_off_topic, angry_words)
    desk = build_desk(policy, engine, constrained, quote, few_shot, settings, classifier, db, help_index)
    result = desk.handle(message)
    print(jsonlib.dumps(result.as_dict(), indent=2, default=str) if json else result.render())
