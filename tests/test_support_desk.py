"""The support desk: the orders database, the hand-over rules, the sentiment classifiers, the help centre, the
``support`` command, the labelled data and a small run of ``bench agent`` on a tiny model."""

import json
import sqlite3

import pytest

from conftest import run_cli
from llm_course.agent.desk.desk import SupportDesk, desk_tools
from llm_course.agent.desk.help import HelpCentre, pages_dir
from llm_course.agent.desk.orders import FIRST, LAST, STATUSES, Orders, ensure_db, seed_rows
from llm_course.agent.desk.routing import KeywordDesk, Settings, mask_card_numbers, order_ids, route, touches_payment
from llm_course.agent.desk.sentiment import EmbeddingHead, Sentiment, desk_label, load_sentiment
from llm_course.agent.policy import Decision
from llm_course.agent.scoring import load_jsonl
from llm_course.agent.tools import check_value
from llm_course.errors import ConfigError, MissingFileError


# ---- orders ----------------------------------------------------------------------------------------------------------
def test_the_orders_database_is_seeded_once_the_same_everywhere(tmp_path):
    path = ensure_db(tmp_path / "desk" / "orders.sqlite")
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]  # no temporary file left behind
    orders = Orders(path)
    assert orders.count() == LAST - FIRST + 1 == 100
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT * FROM orders ORDER BY id").fetchall()
    assert rows == seed_rows() and seed_rows() == seed_rows()
    assert {r[3] for r in rows} == set(STATUSES)  # every status occurs
    assert ensure_db(path) == path and Orders(path).count() == 100  # a second use does not seed again


def test_lookup_finds_orders_and_says_why_it_cannot(tmp_path):
    orders = Orders(tmp_path / "orders.sqlite")
    found = orders.lookup(1042)
    assert found["found"] and found["id"] == 1042 and found["status"] in STATUSES and found["total"].startswith("€")
    assert orders.lookup(9999) == {"found": False, "order_id": 9999,
                                   "error": "there is no order 9999; order numbers run from 1001 to 1100"}  # fmt: skip
    injected = orders.lookup("1001; DROP TABLE orders")  # what an unchecked caller might pass
    assert injected["found"] is False and "is not an order number" in injected["error"]
    assert orders.lookup(True)["found"] is False
    assert orders.count() == 100


# ---- rules -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("message", "payment"), [
    ("I was charged twice for order 1033", True), ("Can you update my card details?", True),
    ("Here is my card 4532 7153 3790 1241", True), ("My payment was declined", True),
    ("Can I pay with a credit card?", False), ("How long is a gift card valid?", False),
    ("Will I be charged customs duties?", False), ("Do you take PayPal?", False),
])  # fmt: skip
def test_payment_details_are_recognised_and_card_numbers_masked(message, payment):
    assert touches_payment(message) is payment
    assert "4532" not in mask_card_numbers("card 4532 7153 3790 1241 ok") and "order 1042" in mask_card_numbers(
        "order 1042"
    )


def test_route_applies_the_rules_around_the_model():
    call = Decision("search_help", {"query": "q"})
    settings = Settings(guards=True, angry_threshold=0.6, min_support=0.3)
    assert route("change my card number", 0.0, 1.0, call, settings).arguments == {"reason": "payment"}
    assert route("hello", 0.7, 1.0, call, settings).arguments == {"reason": "angry"}
    assert route("hello", 0.1, 0.2, call, settings).arguments == {"reason": "not_covered"}
    assert route("hello", 0.1, 0.9, call, settings).name == "search_help"
    assert route("hello", 0.1, 0.9, Decision(None, json_ok=False), settings).arguments == {"reason": "other"}
    assert route("change my card number", 0.9, 0.0, call, Settings(guards=False)).name == "search_help"
    shouted = route("WHERE IS IT??? Useless!", 0.1, 0.9, call, settings)  # the classifier missed it; the words did not
    assert shouted.arguments == {"reason": "angry"} and shouted.by == "rule: angry words ('Useless')"
    assert route("WHERE IS IT??? Useless!", 0.1, 0.9, call, Settings(angry_words=False)).name == "search_help"
    off_topic = route("hello", 0.1, 0.9, call, Settings(max_off_topic=0.6), off_topic=0.7)
    assert off_topic.arguments == {"reason": "not_covered"} and off_topic.by == "rule: off-topic 0.70 >= 0.6"
    assert route("hello", 0.1, 0.9, call, Settings(max_off_topic=0.6), off_topic=0.5).name == "search_help"
    lookup = Decision("lookup_order", {"order_id": 1042})
    assert route("order 1042", 0.1, 0.1, lookup, settings, off_topic=0.99).name == "lookup_order"  # gates: searches
    assert order_ids("order #1042, and order no. 1017") == [1042, 1017]


def test_the_keyword_baseline():
    decide = lambda text: KeywordDesk().decide([{"role": "user", "content": text}])  # noqa: E731
    assert (decide("Where is order 1042?").name, decide("Where is order 1042?").arguments) == (
        "lookup_order",
        {"order_id": 1042},
    )
    assert decide("This is UNACCEPTABLE, get me a MANAGER").arguments == {"reason": "angry"}
    assert decide("Love it!! How do candles burn evenly?").arguments == {"reason": "angry"}  # its known weakness
    assert decide("How do returns work?").arguments == {"query": "How do returns work?"}


# ---- sentiment -------------------------------------------------------------------------------------------------------
def test_label_names_of_module_3_classifiers_map_to_the_desk():
    assert [desk_label(n, 2) for n in ("neg", "POSITIVE", "LABEL_0", "1", "angry")] == [
        "negative",
        "positive",
        "negative",
        "positive",
        "angry",
    ]
    assert Sentiment("negative", 0.9, {"negative": 0.9, "positive": 0.1}, "x").anger == 0.9
    assert Sentiment("angry", 0.8, {"angry": 0.8, "negative": 0.2}, "x").anger == 0.8


def test_the_fallback_head_fits_deterministically_and_reads_moods(embedder):
    head, again = EmbeddingHead(embedder), EmbeddingHead(embedder)
    texts = [
        "Thank you, the mug is gorgeous!",
        "How do I reset my password?",
        "The lamp arrived a bit scratched, disappointing.",
        "You incompetent thieves, I want a manager NOW!",
    ]
    moods = head.predict(texts)
    assert [m.label for m in moods] == ["positive", "neutral", "negative", "angry"]
    assert [m.scores for m in moods] == [m.scores for m in again.predict(texts)]
    assert all(abs(sum(m.scores.values()) - 1) < 1e-6 for m in moods) and moods[0].classifier.startswith("fallback")


def test_a_module_3_classifier_folder_is_used_when_given(tiny_bert, embedder, tmp_path):
    classifier = load_sentiment(tiny_bert, embedder)
    (mood,) = classifier.predict(["fine"])
    assert mood.classifier.startswith("Module 3 classifier") and set(mood.scores) == {"negative", "positive"}
    with pytest.raises(MissingFileError, match="neither an ONNX export"):
        load_sentiment(str(tmp_path), embedder)


# ---- the help centre and the desk ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def desk_parts(embedder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("desk")
    return HelpCentre(embedder, index_dir=None), Orders(folder / "orders.sqlite"), EmbeddingHead(embedder)


def test_the_help_centre_has_ten_to_twenty_pages_that_answer_with_citations(desk_parts):
    help_centre, _, _ = desk_parts
    assert 10 <= len(list(pages_dir().glob("*.md"))) <= 20
    found = help_centre.search("How many days do I have to return something?")
    assert found["citations"][0].startswith("[1] returns.md") and "30 days" in found["answer"]
    covered = help_centre.support("How many days do I have to return something?")
    assert help_centre.support("Would you sponsor our football club?")["dense"] < 0.3 < covered["dense"]
    assert set(covered) == {"dense", "coverage", "mean", "off_topic"}
    # the scope head sees what the retrieval signals miss: a close word ("warehouse") on a request no page is about
    jobs, returns = help_centre.off_topic(["Could I apply for a summer job with you?", "Can I return a mug?"])
    assert jobs > 0.6 > 0.3 > returns
    assert help_centre.section("order-status.md", "shipped")["citation"] == "order-status.md#shipped"


def test_the_desk_answers_looks_up_and_hands_over(desk_parts):
    help_centre, orders, head = desk_parts
    desk = SupportDesk(help_centre, orders, head, KeywordDesk(), Settings(True, 0.6, 0.36))
    answered = desk.handle("How many days do I have to return something?")
    assert answered.action.name == "search_help" and not answered.handed_over
    assert answered.citations[0].startswith("[1] returns.md") and answered.sentiment.label == "neutral"
    looked = desk.handle("Where is my order 1042?")
    status = orders.lookup(1042)["status"]
    assert looked.action.arguments == {"order_id": 1042} and f"is {status}." in looked.reply
    assert looked.citations == [f"[1] order-status.md#{status.replace(' ', '-')}"]
    missing = desk.handle("Where is order 1234?")
    assert "there is no order 1234" in missing.reply and missing.citations == []
    paying = desk.handle("Please take the payment again with my card 4532 7153 3790 1241.")
    assert paying.handed_over and paying.action.by == "rule: payment details" and "4532" not in paying.summary
    assert paying.citations == ["payments.md#questions-about-charges-and-card-details"]
    assert [s["tool"] for s in paying.trace] == ["classify_sentiment", "hand_over"]  # the model is not asked
    uncovered = desk.handle("Do you have job openings in your warehouse?")
    assert uncovered.action.arguments == {"reason": "not_covered"} and "reason: not_covered" in uncovered.summary
    unguarded = SupportDesk(help_centre, orders, head, KeywordDesk(), Settings(guards=False))
    sql = unguarded.handle("order 1001; drop table orders; --")  # the fallback reads it as angry: no rules here
    assert sql.action.arguments == {"order_id": 1001} and "Order 1001" in sql.reply and orders.count() == 100
    with pytest.raises(ConfigError, match="--message is empty"):
        desk.handle("   ")
    long = desk.handle("How do returns work? " * 200)
    assert long.truncated and "cut to its first 2000 characters" in long.reply
    rendered = answered.render()
    assert "sentiment: neutral" in rendered and "tool trace:" in rendered and "hand-over: no" in rendered
    assert json.loads(json.dumps(paying.as_dict(), default=str))["hand_over"] is True


def test_support_command_prints_the_trace_and_creates_the_database(tmp_path, capsys):
    db = tmp_path / "orders.sqlite"
    run_cli("support", "--message", "Where is my order 1017?", "--policy", "keywords", "--db", db,
            "--help_index", tmp_path / "help")  # fmt: skip
    out = capsys.readouterr().out
    assert db.is_file() and "sentiment: " in out and "fallback: logistic regression" in out
    assert "lookup_order {'order_id': 1017}" in out and "order-status.md#" in out and "hand-over: no" in out


def test_the_desk_built_for_serve_chooses_with_the_engine_it_is_given(tiny_llama, tmp_path):
    from llm_course.agent.commands import build_desk
    from llm_course.inference import GenerationEngine

    with pytest.raises(ConfigError, match="no model is loaded"):
        build_desk("model", None)
    engine = GenerationEngine.load(tiny_llama, device="cpu")  # as serve passes its first loaded model
    # no examples: their prompt outgrows the tiny model's 1,024 byte-level tokens
    desk = build_desk("model", engine, few_shot=False, db=str(tmp_path / "orders.sqlite"), help_index=None)
    assert desk.policy.engine is engine and desk.policy.label == "constrained, quoting, 0-shot"
    asked = desk.handle("How do I return a mug?")
    assert asked.trace[1]["tool"] == "(model call)" and asked.trace[1]["by"] == "constrained, quoting, 0-shot"
    assert asked.trace[1]["error"] is None  # the grammar makes the random model's call valid
    paying = desk.handle("Please change the card number I pay with")  # a rule decides: the model is not asked
    assert paying.handed_over and [s["tool"] for s in paying.trace] == ["classify_sentiment", "hand_over"]


# ---- the labelled data -----------------------------------------------------------------------------------------------
def test_the_labelled_messages_and_tasks_are_complete_and_valid():
    rows = load_jsonl("messages.jsonl", package="llm_course.agent.desk")
    tools = {t.name: t for t in desk_tools(None, None)}
    pages = {p.name for p in pages_dir().glob("*.md")}
    assert len(rows) >= 60 and len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["sentiment"] in ("positive", "neutral", "negative", "angry"), r
        assert not check_value(r["action"]["arguments"], tools[r["action"]["tool"]].parameters, "arguments"), r
        assert r["page"] is None or r["page"] in pages, r
    for split in ("validation", "test"):
        part = [r for r in rows if r["split"] == split]
        assert {r["action"]["arguments"].get("reason") for r in part} >= {"angry", "payment", "not_covered"}
    tasks = load_jsonl("agent_tasks.jsonl")
    assert len(tasks) >= 20 and {t["tool"] for t in tasks} == {"calculate", "search_notes"}


@pytest.mark.slow
def test_bench_agent_writes_its_report_on_a_tiny_model(tiny_llama, tmp_path):
    from llm_course.agent.bench import bench_agent

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# A\n\n## Seeds\n\nSeed every generator once.\n")
    paths = bench_agent(str(tmp_path / "out"), model=tiny_llama, notes=str(notes), limit=1, max_new_tokens=8)
    report = json.loads(open(paths["json"]).read())
    assert set(report["desk"]) == {"keyword rules", "base unconstrained", "base constrained"}
    assert report["desk"]["base constrained"]["chosen"]["chosen_on"] == "validation messages"
    assert report["desk"]["keyword rules"]["test"]["messages"] == 1 and "targets" in report
    assert set(report["agent_tasks"]) == {"keyword rules", "base unconstrained", "base constrained"}
    assert (tmp_path / "out" / "agent.png").is_file()
