"""The desk's rules: when a person takes over, and the keyword-rule baseline the model is measured against.

Hand-over rules run before the model and after it, because a 135M model should not be the only thing between a
customer's card number and a chat log: anything touching payment details (a rule on words and card-like digit runs),
a clearly angry customer (the sentiment classifier's anger above a threshold chosen on validation messages), and a
request the help centre does not cover (the help-centre retrieval's support for the message below a threshold, as
Module 8's abstention gate; its signal and threshold are chosen on the validation messages too, as is the
threshold of the help centre's scope head: the probability that a message asks for something no help page is about,
such as a job, a visit or a sponsorship, which a close word like "warehouse" can hide from the retrieval signals).
Words no calm customer writes ("scam", "useless", "lawyer") hand over too, whatever the classifier says: a head
fitted on ~90 sentences can miss an angry message in capitals.
"""

import re
import time
from dataclasses import dataclass, field
from typing import Any

from llm_course.agent.policy import Decision, rule_decision
from llm_course.agent.tools import MAX_STRING

# Chosen by `llm-course bench agent` on the validation messages (notes/09_agent_support.md).
ANGRY_THRESHOLD = 0.5
MIN_SUPPORT = 0.3
MAX_OFF_TOPIC = 0.6
SIGNAL = "dense"  # the best cosine: customers' words that no page uses ("something", "many") sink the coverage
SIGNALS = ("dense", "coverage", "mean")
PAYMENT = re.compile(
    r"\b(?:my|new|the|this|that|your|other|another|different)\s+(?:credit |debit |bank )?cards?\b(?! code)|"
    r"\bcard (?:number|details)|\b(?:cvv|cvc|security code|iban|bank account|"
    r"bank details|sort code|billing|chargeback|debited|charged (?:me|twice|double|the wrong|two|2)|been charged|"
    r"double[- ]charged|charge on my|unauthori[sz]ed (?:charge|payment)|payment (?:details|information|method|"
    r"failed|declined|was declined|did not go through|didn't go through)|declined|pin code|paypal password)\b",
    re.I,
)
CARD_DIGITS = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")  # 13-19 digits, spaces or dashes allowed
ANGRY_WORDS = re.compile(
    r"\b(unacceptable|furious|outrageous|disgrace\w*|disgusting|scam\w*|fraud|thie\w+|liars?|lied|lawyer|manager|"
    r"supervisor|pathetic|useless|incompetent|ridiculous|appalling|livid|fuming|worst|joke|rip-?off|sue)\b",
    re.I,
)
ORDER = re.compile(r"(?:\border\b|#|\bnumber\b|\bno\.)\D{0,12}?(\d{3,6})\b", re.I)


def touches_payment(message: str) -> bool:
    """Whether the message mentions payment details or charges, or holds a card-like run of digits."""
    return bool(PAYMENT.search(message) or CARD_DIGITS.search(message))


def mask_card_numbers(text: str) -> str:
    """Card-like digit runs replaced by ``[card number removed]``, so summaries and logs never hold one."""
    return CARD_DIGITS.sub("[card number removed]", text)


def order_ids(message: str) -> list[int]:
    """Order numbers the message names ("order 1042", "#1042", "order no. 1042")."""
    return [int(m) for m in ORDER.findall(message)]


def shouts(message: str) -> bool:
    """Two or more words in capitals, or "!!"."""
    return "!!" in message or len(re.findall(r"\b[A-Z]{3,}\b", message)) >= 2


@dataclass
class Settings:
    """The desk's routing settings (chosen on the validation messages by ``bench agent``).

    Attributes:
        guards: apply the hand-over rules around the model (off: the model alone decides).
        angry_threshold: hand over when the classifier's anger is at least this.
        min_support: hand over a help-centre search when the pages' support for the message is below this.
        signal: the support signal: dense (best cosine), coverage (IDF-weighted words) or mean.
        max_off_topic: hand over a help-centre search when the scope head's P(not covered) is at least this
            (above 1: off).
        angry_words: hand over messages with words no calm customer writes (:data:`ANGRY_WORDS`).
    """

    guards: bool = True
    angry_threshold: float = ANGRY_THRESHOLD
    min_support: float = MIN_SUPPORT
    signal: str = SIGNAL
    max_off_topic: float = MAX_OFF_TOPIC
    angry_words: bool = True


@dataclass
class Action:
    """What the desk does: a tool and its arguments, and which rule or model chose it."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    by: str = "model"

    def as_dict(self) -> dict[str, Any]:
        return {"tool": self.name, "arguments": self.arguments, "chosen_by": self.by}


def rule_before_model(message: str, anger: float, settings: Settings) -> Action | None:
    """The hand-over a rule decides before the model is asked: payment details, then an angry customer."""
    if not settings.guards:
        return None
    if touches_payment(message):
        return Action("hand_over", {"reason": "payment"}, "rule: payment details")
    if anger >= settings.angry_threshold:
        return Action("hand_over", {"reason": "angry"}, f"rule: anger {anger:.2f} >= {settings.angry_threshold}")
    if settings.angry_words and (words := ANGRY_WORDS.search(message)):
        return Action("hand_over", {"reason": "angry"}, f"rule: angry words ({words.group(0)!r})")
    return None


def route(message: str, anger: float, support: float, decision: Decision | None, settings: Settings,
          off_topic: float = 0.0) -> Action:  # fmt: skip
    """The desk's action for a message, from the pieces computed for it: the rules first (payment, anger), then the
    model's call, then the gates on a help-centre search (``support``: the help centre's support for the message,
    by ``settings.signal``; ``off_topic``: the scope head's P(not covered)). A call that is not valid goes to a
    person."""
    if (ruled := rule_before_model(message, anger, settings)) is not None:
        return ruled
    if decision is None or not decision.valid:
        return Action("hand_over", {"reason": "other"}, "no valid call from the model")
    if settings.guards and decision.name == "search_help":
        if support < settings.min_support:
            return Action("hand_over", {"reason": "not_covered"},
                          f"rule: help-centre {settings.signal} {support:.2f} < {settings.min_support}")  # fmt: skip
        if off_topic >= settings.max_off_topic:
            return Action("hand_over", {"reason": "not_covered"},
                          f"rule: off-topic {off_topic:.2f} >= {settings.max_off_topic}")  # fmt: skip
    return Action(decision.name, dict(decision.arguments), "model")


class KeywordDesk:
    """The keyword-rule baseline: payment words or card digits, then angry words or shouting, hand over; an order
    number looks the order up; anything else searches the help centre with the message itself."""

    label = "keyword rules"

    def decide(self, history: list[dict[str, str]], max_seconds: float | None = None) -> Decision:
        start, message = time.perf_counter(), history[-1]["content"]
        if touches_payment(message):
            return rule_decision("hand_over", {"reason": "payment"}, start)
        if ANGRY_WORDS.search(message) or shouts(message):
            return rule_decision("hand_over", {"reason": "angry"}, start)
        if ids := order_ids(message):
            return rule_decision("lookup_order", {"order_id": ids[0]}, start)
        return rule_decision("search_help", {"query": message[:MAX_STRING]}, start)
