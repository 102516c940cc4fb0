"""The support desk: one customer message → sentiment, one tool call, a reply with citations, or a hand-over.

The pipeline composes the course's parts and keeps none of their code: the sentiment classifier (Module 3 or the
fallback), the call chosen by the chat model under the call grammar (Module 7's engine), the help-centre search
(Module 8's retriever) and the orders database. Replies are built from what the tools returned (the help pages' own
sentences, the order's row), never from free text of the 135M model, so every statement in a reply has a source.
"""

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from llm_course.agent.desk.help import HelpCentre
from llm_course.agent.desk.orders import FIRST, LAST, Orders
from llm_course.agent.desk.routing import Action, Settings, mask_card_numbers, order_ids, route, rule_before_model
from llm_course.agent.desk.sentiment import Sentiment
from llm_course.agent.policy import Decision, Example, Policy
from llm_course.agent.tools import MAX_STRING, Tool, ToolBox, tool
from llm_course.errors import ConfigError

MAX_MESSAGE = 2000  # characters: a longer message is cut (and the reply says so) before anything reads it
INTRO = (
    "You are the assistant of Larkspur & Co., an online shop for home goods. Choose one tool for the customer's "
    "message: search_help for questions the help centre answers, lookup_order when they give an order number, "
    "hand_over for angry customers, payment details, or requests outside the help centre."
)
EXAMPLES: list[Example] = [  # written for the prompt; none is an evaluation message
    ("Hi, where is my order 1003? It has been a while.", "lookup_order", {"order_id": 1003}),
    ("How much does express delivery cost?", "search_help", {"query": "How much does express delivery cost?"}),
    ("This is a disgrace, nobody answers me. Get me a manager right now!", "hand_over", {"reason": "angry"}),
    ("Can I return a mug I bought last week?", "search_help", {"query": "Can I return a mug I bought last week?"}),
    ("Please update the card number I pay with.", "hand_over", {"reason": "payment"}),
    ("Status of #1088 please", "lookup_order", {"order_id": 1088}),
    ("Do you offer wholesale prices for restaurants?", "hand_over", {"reason": "not_covered"}),
    ("I forgot my password, what do I do?", "search_help", {"query": "I forgot my password, what do I do?"}),
]  # fmt: skip
HANDOVER_REPLY = {
    "angry": "I am sorry this has gone wrong. I am passing your message to a colleague, who will answer you within "
    "one working day.",
    "payment": "For your safety I cannot handle payment details in this chat: our billing team will contact you by "
    "phone. Please do not send card numbers or security codes here.",
    "not_covered": "Our help centre does not cover this, so I am passing your message to a colleague, who will "
    "answer within one working day.",
    "other": "I am passing your message to a colleague, who will answer within one working day.",
}
HANDOVER_PAGE = {"payment": ("payments.md", "Questions about charges and card details")}


def desk_tools(help_centre: HelpCentre, orders: Orders) -> list[Tool]:
    """The desk's tools: search_help, lookup_order, hand_over."""

    def search_help(query: str) -> dict[str, Any]:
        """Search the shop's help centre (shipping, returns, refunds, warranty, accounts, payments...).

        Args:
            query: the customer's question.
        """
        return help_centre.search(query)

    def lookup_order(order_id: int) -> dict[str, Any]:
        """Look an order up by its number to tell its status.

        Args:
            order_id: the order number, from 1001 to 1100.
        """
        return orders.lookup(order_id)

    def hand_over(reason: Literal["angry", "payment", "not_covered", "other"]) -> dict[str, Any]:
        """Pass the conversation to a person.

        Args:
            reason: angry customer, payment details, a request the help centre does not cover, or other.
        """
        return {"handed_over": True, "reason": reason, "answer_within": "one working day"}

    return [tool(search_help), tool(lookup_order), tool(hand_over)]


def quote_message(tools: list[Tool]) -> Callable[[list[dict[str, str]]], list[Tool]]:
    """A narrowing for :class:`~llm_course.agent.policy.ModelPolicy`: the arguments of a call must come from the
    customer's message. ``search_help``'s query is the message itself and ``lookup_order``'s number one that the
    message names (the tool is left out when it names none), so the grammar leaves the model one decision: which
    tool (and, for a hand-over, why). The model can no longer invent an order number or answer a question it was
    not asked (a 135M model copies the few-shot examples' queries)."""

    def narrow(history: list[dict[str, str]]) -> list[Tool]:
        message = history[-1]["content"]
        ids = order_ids(message) or [int(n) for n in re.findall(r"\b\d{4,6}\b", message)]
        narrowed = []
        for t in tools:
            props = dict(t.parameters["properties"])
            if t.name == "search_help":
                props["query"] = {"type": "string", "enum": [message[:MAX_STRING]]}
            elif t.name == "lookup_order":
                if not ids:
                    continue
                props["order_id"] = {"type": "integer", "enum": sorted(set(ids))}
            narrowed.append(replace(t, parameters={**t.parameters, "properties": props}))
        return narrowed

    return narrow


@dataclass
class SupportResult:
    message: str
    sentiment: Sentiment
    action: Action
    reply: str
    citations: list[str] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    summary: str | None = None  # for the person taking over
    seconds: float = 0.0
    truncated: bool = False

    @property
    def handed_over(self) -> bool:
        return self.action.name == "hand_over"

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "sentiment": self.sentiment.as_dict(), "action": self.action.as_dict(),
                "reply": self.reply, "citations": self.citations, "hand_over": self.handed_over,
                "hand_over_summary": self.summary, "trace": self.trace, "seconds": round(self.seconds, 3),
                "message_truncated": self.truncated}  # fmt: skip

    def render(self) -> str:
        s = self.sentiment
        lines = [f"sentiment: {s.label} ({s.confidence:.2f}) by {s.classifier}", "tool trace:"]
        for step in self.trace:
            shown = f"error: {step['error']}" if step.get("error") else str(step.get("result"))[:160]
            lines.append(f"  {step['tool']} {step['arguments']} → {shown}  ({step['seconds']:.2f} s; {step['by']})")
        lines += ["", "reply:", f"  {self.reply}"]
        lines += ["citations:", *[f"  {c}" for c in self.citations]] if self.citations else ["citations: none"]
        lines.append(f"hand-over: {'yes' if self.handed_over else 'no'}")
        if self.summary:
            lines.append(f"summary for the person taking over: {self.summary}")
        return "\n".join(lines)


class SupportDesk:
    """Handle customer messages.

    Args:
        help_centre: the indexed help pages.
        orders: the orders database.
        classifier: the sentiment classifier (``predict(texts) -> list[Sentiment]``).
        policy: chooses the tool call (a :class:`~llm_course.agent.policy.ModelPolicy` over :func:`desk_tools`, or
            :class:`~llm_course.agent.desk.routing.KeywordDesk`).
        settings: the hand-over rules' settings.
        timeout: seconds a tool may take.
    """

    def __init__(self, help_centre: HelpCentre, orders: Orders, classifier: Any, policy: Policy,
                 settings: Settings | None = None, timeout: float = 10.0) -> None:  # fmt: skip
        self.help, self.orders, self.classifier, self.policy = help_centre, orders, classifier, policy
        self.settings = settings or Settings()
        self.tools = desk_tools(help_centre, orders)
        self.toolbox = ToolBox(self.tools, timeout)

    def handle(self, message: str) -> SupportResult:
        """Answer one message.

        Raises:
            ConfigError: the message is empty.
        """
        start, text = time.perf_counter(), (message or "").strip()
        if not text:
            raise ConfigError("--message is empty: write the customer's message")
        truncated = len(text) > MAX_MESSAGE
        text = text[:MAX_MESSAGE]
        trace: list[dict[str, Any]] = []
        t = time.perf_counter()
        sentiment = self.classifier.predict([text])[0]
        trace.append(_step("classify_sentiment", {"text": "(the message)"}, sentiment.as_dict(), None, t, "desk"))
        signals = self.help.support(text) if self.settings.guards else {self.settings.signal: 1.0, "off_topic": 0.0}
        support = signals[self.settings.signal]
        decision = self._decide(text, sentiment.anger)
        if decision is not None:
            trace.append({"tool": "(model call)", "arguments": decision.arguments, "result": decision.raw,
                          "error": None if decision.valid else "; ".join(decision.problems) or "no call",
                          "seconds": decision.seconds, "by": self.policy.label})  # fmt: skip
        action = route(text, sentiment.anger, support, decision, self.settings, signals["off_topic"])
        result = self.toolbox.call(action.name, action.arguments)
        trace.append({"tool": action.name, "arguments": action.arguments, "result": result.value,
                      "error": result.error, "seconds": round(result.seconds, 4), "by": action.by})  # fmt: skip
        reply, citations = self.compose(action, result.value, result.error)
        if truncated:
            reply += f" (Your message was cut to its first {MAX_MESSAGE} characters.)"
        summary = self.summary(text, sentiment, action, trace, support) if action.name == "hand_over" else None
        return SupportResult(text, sentiment, action, reply, citations, trace, summary, time.perf_counter() - start,
                             truncated)  # fmt: skip

    def _decide(self, text: str, anger: float) -> Decision | None:
        """The policy's call, unless a hand-over rule already decides (then the model is not asked)."""
        if rule_before_model(text, anger, self.settings) is not None:
            return None
        return self.policy.decide([{"role": "user", "content": text}])

    def compose(self, action: Action, value: Any, error: str | None) -> tuple[str, list[str]]:
        """The reply and its citations, from the tool's result."""
        if error is not None:
            return HANDOVER_REPLY["other"] + f" (The {action.name} tool failed: {error}.)", []
        if action.name == "search_help":
            return f"From our help centre: {value['answer']}", value["citations"]
        if action.name == "lookup_order":
            return self.order_reply(value)
        reason = action.arguments.get("reason", "other")
        page = HANDOVER_PAGE.get(reason, ("contact.md", "Talking to a person"))
        section = self.help.section(*page)
        return HANDOVER_REPLY[reason], [section["citation"]] if section else []

    def order_reply(self, order: dict[str, Any]) -> tuple[str, list[str]]:
        if not order.get("found"):
            return (f"I could not find that order: {order['error']}. Please check the number in your order "
                    f"confirmation email (order numbers run from {FIRST} to {LAST}).", [])  # fmt: skip
        status = order["status"]
        text = f"Order {order['id']} ({order['items']}, placed on {order['placed_on']}) is {status}."
        if order.get("tracking") and status in ("shipped", "out for delivery", "delayed"):
            text += f" It travels with {order['carrier']}, tracking number {order['tracking']}."
        if order.get("expected_on") and status in ("processing", "shipped", "out for delivery", "delayed"):
            text += f" Expected delivery: {order['expected_on']}."
        section = self.help.section("order-status.md", status)
        if section is None:
            return text, []
        return f"{text} {section['text']} [1]", [f"[1] {section['citation']}"]

    def summary(self, text: str, sentiment: Sentiment, action: Action, trace: list[dict[str, Any]],
                support: float) -> str:  # fmt: skip
        """What the person taking over reads first: why, the mood, the orders named, and the message (card-like
        numbers removed)."""
        reason = action.arguments.get("reason", "other")
        found = []
        for order_id in order_ids(text)[:3]:
            order = self.orders.lookup(order_id) if FIRST <= order_id <= LAST else None
            found.append(f"{order_id} ({order['status']})" if order and order.get("found") else f"{order_id} (none)")
        tools = ", ".join(s["tool"] for s in trace if not s["tool"].startswith("("))
        return (f"reason: {reason} ({action.by}); sentiment {sentiment.label} {sentiment.confidence:.2f}; "
                f"help-centre support {support:.2f}; orders named: {', '.join(found) or 'none'}; tools run: {tools}; "
                f'message: "{mask_card_numbers(text)[:400]}"')  # fmt: skip


def _step(name: str, arguments: dict[str, Any], result: Any, error: str | None, start: float, by: str) -> dict:
    return {"tool": name, "arguments": arguments, "result": result, "error": error,
            "seconds": round(time.perf_counter() - start, 4), "by": by}  # fmt: skip
