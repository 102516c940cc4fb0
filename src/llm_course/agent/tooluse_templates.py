"""Wording for the tool-use training data (:mod:`llm_course.agent.tooluse_data`): tasks written from templates with
varied phrasing, names and numbers. None of it is copied from the evaluation tasks or messages; the generator
rejects anything too close to them anyway.

Every maker takes a :class:`random.Random` and returns the user's text with what the right call needs: an
arithmetic maker also returns the expression and its value, computed here in Python, independently of the
``calculate`` tool that the generator checks it against.
"""

import random
from collections.abc import Callable

Problem = tuple[str, str, float]  # (task, expression for calculate, its value)
NAMES = ["Amara", "Bruno", "Carla", "Dmitri", "Elif", "Farid", "Greta", "Hana", "Ivo", "Jasmin", "Kofi", "Lena",
         "Marek", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tariq"]  # fmt: skip
ITEMS = ["notebooks", "candles", "plant pots", "bus tickets", "coffee bags", "towels", "mugs", "light bulbs"]
PRODUCTS = ["walnut bookends", "linen napkins", "stoneware bowl", "copper kettle", "wool rug", "glass vase",
            "bamboo cutting board", "enamel pan", "ceramic teapot", "floor lamp", "cotton duvet",
            "oak stool"]  # fmt: skip
COUNTRIES = ["Spain", "Norway", "Italy", "Poland", "Ireland", "Portugal", "Austria", "Denmark", "Japan", "Belgium"]


def _ops(rng: random.Random) -> Problem:
    op = rng.choice("+-*/")
    a, b = rng.randint(12, 999), rng.randint(3, 99)
    if op == "/":
        a = b * rng.randint(3, 300)
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    text = rng.choice({
        "+": ["What is {a} plus {b}?", "Add {b} to {a}.", "What's the sum of {a} and {b}?", "{a} + {b} = ?"],
        "-": ["What is {a} minus {b}?", "Subtract {b} from {a}.", "How much is {a} take away {b}?", "{a} - {b}?"],
        "*": ["What is {a} times {b}?", "Multiply {a} by {b}.", "What's the product of {a} and {b}?", "{a} x {b}?"],
        "/": ["Divide {a} by {b}.", "How much is {a} / {b}?", "What do you get when {a} is split into {b} equal parts?",
              "Work out {a} ÷ {b}."],
    }[op])  # fmt: skip
    return text.format(a=a, b=b), f"{a} {op} {b}", value


THREE: list[tuple[str, Callable[[int, int, int], int]]] = [
    ("{a} * {b} - {c}", lambda a, b, c: a * b - c), ("({a} + {b}) * {c}", lambda a, b, c: (a + b) * c),
    ("{c} + {a} * {b}", lambda a, b, c: c + a * b), ("{a} * ({c} - {b})", lambda a, b, c: a * (c - b)),
]  # fmt: skip


def _three(rng: random.Random) -> Problem:
    a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(1, 500)
    form, value = rng.choice(THREE)
    expression = form.format(a=a, b=b, c=c)
    text = rng.choice(["Evaluate {e}.", "Please calculate {e} for me.", "What does {e} come to?", "{e} equals what?",
                       "Could you work out {e}?"])  # fmt: skip
    return text.format(e=expression), expression, value(a, b, c)


def _percent(rng: random.Random) -> Problem:
    p, x = rng.choice([5, 10, 20, 25, 30, 40, 50, 75]), 20 * rng.randint(2, 60)
    text = rng.choice(["Take {p} percent of {x}.", "A {x} euro coat is {p}% off. How many euros is the discount?",
                       "{p} percent of {x} is how much?", "How much is {p}% of {x} euros?"])  # fmt: skip
    return text.format(p=p, x=x), f"{x} * {p} / 100", x * p // 100


def _power_root(rng: random.Random) -> Problem:
    if rng.random() < 0.5:
        a, b = rng.randint(2, 9), rng.randint(2, 6)
        text = rng.choice(["Raise {a} to the power {b}.", "How much is {a} raised to {b}?", "What is {a}^{b}?",
                           "Compute {a} ** {b}."])  # fmt: skip
        return text.format(a=a, b=b), f"{a} ** {b}", a**b
    r = rng.randint(4, 99)
    text = rng.choice(["Find the square root of {s}.", "What's sqrt({s})?", "Take the square root of {s}, please.",
                       "Which number squared gives {s}?"])  # fmt: skip
    return text.format(s=r * r), f"sqrt({r * r})", r


def _story(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    k, p, m = rng.randint(2, 40), rng.randint(2, 90), rng.randint(2, 12)
    stories: list[Callable[[], Problem]] = [
        lambda: (f"{name} buys {k} {item} at {p} euros each. How much is that?", f"{k} * {p}", k * p),
        lambda: (f"{name} pays with a 200 euro note for something costing {p} euros. How much change comes back?",
                 f"200 - {p}", 200 - p),
        lambda: (f"{m} friends share a bill of {m * p} euros equally. What does each one pay?", f"{m * p} / {m}", p),
        lambda: (f"How many seconds are there in {m} hours?", f"{m} * 60 * 60", m * 3600),
        lambda: (f"How many minutes is {m} hours and {k} minutes?", f"{m} * 60 + {k}", m * 60 + k),
        lambda: (f"A cyclist covers {m * p} km in {m} hours. What is the average speed in km per hour?",
                 f"{m * p} / {m}", p),
        lambda: (f"What is the average of {p}, {p + k} and {p + 2 * k}?", f"({p} + {p + k} + {p + 2 * k}) / 3", p + k),
        lambda: (f"A shelf holds {k} boxes with {m} {item} in each. How many {item} is that?", f"{k} * {m}", k * m),
        lambda: (f"{name} saves {p} euros a week for {k} weeks. How much is saved?", f"{p} * {k}", p * k),
    ]  # fmt: skip
    return rng.choice(stories)()


def _ml(rng: random.Random) -> Problem:
    i, o = rng.choice([64, 128, 256, 384, 768, 1024]), rng.choice([10, 32, 64, 100, 512])
    s, b = rng.randint(5, 80) * 10, rng.choice([4, 8, 16, 32, 64])
    n = b * rng.randint(10, 500)
    problems: list[Problem] = [
        (f"A linear layer maps {i} inputs to {o} outputs with a bias. How many parameters does it have?",
         f"{i} * {o} + {o}", i * o + o),
        (f"An embedding table has {n} rows of width {i}. How many numbers does it store?", f"{n} * {i}", n * i),
        (f"Training runs {s} steps with {b} examples per step. How many examples does it see?", f"{s} * {b}", s * b),
        (f"A dataset of {n} examples is cut into batches of {b}. How many batches is that?", f"{n} / {b}", n // b),
        (f"A model has {o} million parameters stored in 2 bytes each. How many megabytes is that?", f"{o} * 2",
         o * 2),
        (f"A GPU handles {b * 10} images a second. How many seconds for {n * 10} images?", f"{n * 10} / {b * 10}",
         n // b),
    ]  # fmt: skip
    return rng.choice(problems)


def _order_numbers(rng: random.Random) -> Problem:
    """Arithmetic whose numbers look like order numbers (1001-1100): the answer is still a calculation."""
    n, m, k = rng.randint(1001, 1100), rng.randint(1001, 1100), rng.randint(2, 9)
    w, v = rng.randint(2, 30), rng.randint(2, 30)
    problems: list[Problem] = [
        (f"Add {n} and {m}.", f"{n} + {m}", n + m),
        (f"What is {n} minus {k * 10}?", f"{n} - {k * 10}", n - k * 10),
        (f"A sofa costs {n} euros. What do {k} of them cost?", f"{n} * {k}", n * k),
        (f"Order {n} weighs {w} kg and order {m} weighs {v} kg. How much do they weigh together?", f"{w} + {v}",
         w + v),
        (f"An order of {n * k} mugs is packed {k} to a box. How many boxes is that?", f"{n * k} / {k}", n),
        (f"The warehouse sent {n} parcels on Monday and {m} on Tuesday. How many parcels in all?", f"{n} + {m}",
         n + m),
        (f"I ordered {k} chairs at {n} euros each, what's the total?", f"{k} * {n}", k * n),
    ]  # fmt: skip
    return rng.choice(problems)


ARITHMETIC: list[Callable[[random.Random], Problem]] = [_ops, _three, _percent, _power_root, _story, _ml]
CONTRAST = _order_numbers  # the calculations that a lookup_order call must not take

NOTES_QUESTIONS = [
    "What do the course notes say about {t}?", "Look up {t} in the course notes.", "Search the notes for {t}.",
    "I'm studying the course. What does it say on {t}?", "Where in the notes is {t} explained?",
    "Explain {t}, using the course notes.", "Check the course notes on {t}.", "Find the section of the notes on {t}.",
    "Using the notes, tell me about {t}.", "Can the notes help me understand {t}?",
    "Quick question about the course material: {t}. What do the notes say?", "Course notes: {t}?",
]  # fmt: skip
OFF_NOTES = ["the French revolution", "sourdough starters", "knitting a scarf", "the rules of cricket",
             "growing tomatoes on a balcony", "the history of jazz"]  # fmt: skip

SUBJECTS = ["The blender", "This hotel", "The film", "Our new sofa", "The app update", "The concert", "This phone case",
            "The pizza", "The online course", "My new headset", "The museum tour", "The hiking jacket"]  # fmt: skip
COMMENTS = {
    "positive": ["works perfectly and looks lovely", "was a real pleasure from start to finish",
                 "went beyond what I hoped for", "made my whole week", "is worth every cent"],
    "neutral": ["arrived on Tuesday", "comes in three colours", "does what the label says, nothing more",
                "was roughly what I expected", "ships with a short manual"],
    "negative": ["stopped working after two days", "was a let-down", "feels cheap and flimsy", "was cold and bland",
                 "took far longer than promised"],
    "angry": ["is a total rip-off and I am livid", "ruined my evening and I am FURIOUS",
              "is the last straw, I am fuming!!!", "made me so mad I slammed the door"],
}  # fmt: skip
SENTIMENT_QUESTIONS = [
    "Is this review positive or negative? '{x}'", 'What is the sentiment of: "{x}"',
    "Classify the sentiment of this text: “{x}”", "How does the writer feel here: '{x}'",
    'Does this sound angry to you? "{x}"', "Sentiment check, please: '{x}'",
    'Would you call this comment happy or unhappy? "{x}"', "Rate the mood of ‘{x}’",
]  # fmt: skip

ORDER_QUESTIONS = [
    "Where is order {n}?", "Can you check order {n} for me?", "Has order #{n} shipped?", "Look up order number {n}.",
    "I'm waiting on order {n}, any update?", "Order {n}: what's happening with it?", "Is my order {n} delivered yet?",
    "Please track order no. {n}.", "Status for #{n}?", "When does order {n} arrive?",
    "{n} is my order number, where is it?", "Hi, I'd like an update on order {n}, thanks.",
]  # fmt: skip

GREETINGS = ["", "", "Hi! ", "Hello, ", "Quick question: ", "Good morning. "]
THANKS = ["", "", " Thanks!", " Thank you."]
HELP_QUESTIONS = [
    "How long does delivery to {c} take?", "Do you ship to {c}?", "What does express shipping to {c} cost?",
    "Can I return the {p} after {d} days?", "Is return shipping free from {c}?", "How do I print a return label?",
    "How long until a refund reaches my bank?", "Is there a warranty on the {p}?",
    "My {p} broke after {d} months, is it under guarantee?", "How do I change the delivery address on my account?",
    "Which payment methods can I use?", "Can I pay by bank transfer?", "Does a gift card ever expire?",
    "Can I use a gift card and a discount code together?", "How do I clean the {p}?",
    "Can the {p} go in the dishwasher?", "How do I cancel an order I placed this morning?",
    "Can I exchange the {p} for another colour?", "Do I pay customs fees when you ship to {c}?",
    "How do I unsubscribe from your marketing emails?", "What personal data do you keep about me?",
    "Is there a phone number I can call?", "When is your live chat open?", "My {p} arrived cracked, what now?",
    "The parcel was left at the wrong house.", "Part of my order is missing from the box.",
    "My tracking link doesn't work.", "Do you have a student discount?", "Can I reset my password from the app?",
]  # fmt: skip
ANGRY = [
    "This is the {k}th time I'm writing and still nothing. I am fed up with you people!",
    "Absolutely unacceptable. The {p} fell apart and nobody cares. Get me a manager NOW.",
    "I'm livid. {k} weeks of waiting and not one reply!!", "Worst shop ever. Fix this today or I tell everyone I know.",
    "Are you kidding me?! The {p} came smashed AGAIN. I have had it with you.",
    "You keep ignoring me. This is outrageous and I want someone in charge, now!",
]  # fmt: skip
PAYMENT = [
    "I think my card was charged {k} times for one order.", "Can you change the card on file to my new Visa?",
    "My card is 4111 1111 1111 1111, expiry 09/{y}, please charge it.", "Take the payment from my other bank account.",
    "My bank shows a pending charge twice, can you cancel one?", "I want to pay the rest with a different card.",
    "Please put the refund on my partner's card instead.", "Here is my CVV: {cvv}. Can you retry the payment?",
]  # fmt: skip
NOT_COVERED = [
    "Can you recommend a good plumber?", "Do you buy second-hand furniture?", "Can I rent your warehouse for a party?",
    "What's the weather going to be tomorrow?", "Will you sponsor our school's summer fair?",
    "Are you hiring delivery drivers?", "Can you help me with my maths homework?",
    "Could you build me a bespoke wardrobe?", "Do you have a shop in {c} I can visit?",
    "Can I sell my handmade pottery through your website?",
]  # fmt: skip
