"""The shop's orders: a real SQLite database (the standard library's ``sqlite3``), orders 1001-1100.

The file is created and seeded on first use from a fixed seed, so every install holds the same orders: written to a
temporary file beside it, synced, and renamed into place under a file lock, so a reader never opens half a database
and two first uses do not both seed it. Queries take their values as parameters (``?``), never pasted into the SQL:
a customer who writes ``1001; DROP TABLE orders`` gets "not an order number", and the table stays.
"""

import os
import random
import sqlite3
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from filelock import FileLock

FIRST, LAST = 1001, 1100
SEED = 23
DEFAULT_DB = "outputs/support_desk/orders.sqlite"
# status → weight in the seeded mix; order-status.md explains each one under a heading of the same name
STATUSES = {"processing": 14, "shipped": 20, "out for delivery": 8, "delivered": 30, "delayed": 8, "cancelled": 6,
            "return requested": 6, "refunded": 6, "lost in transit": 2}  # fmt: skip
PRODUCTS = [("linen tea towel set", 1800), ("oak serving board", 4200), ("stoneware mug", 1400),
            ("wool throw blanket", 8900), ("brass desk lamp", 12500), ("ceramic planter", 3100),
            ("cotton bath towel", 2600), ("cast-iron skillet", 5400), ("glass carafe", 2200),
            ("scented candle", 1900), ("walnut bookends", 3800), ("copper kettle", 7600)]  # fmt: skip
CARRIERS = ["ParcelNet", "Swiftpost", "GreenCourier"]
NAMES = ["Ada", "Ben", "Chloe", "Dev", "Ema", "Felix", "Grace", "Hugo", "Ines", "Jon", "Kira", "Leo", "Mina",
         "Noah", "Olga", "Pia", "Ravi", "Sara", "Tomas", "Uma", "Vera", "Wen", "Yusuf", "Zoe"]  # fmt: skip
TODAY = date(2026, 11, 30)  # the seeded world's "today": dates are fixed, so replies are too
SCHEMA = """CREATE TABLE orders (
    id INTEGER PRIMARY KEY, customer TEXT NOT NULL, placed_on TEXT NOT NULL, status TEXT NOT NULL,
    items TEXT NOT NULL, total_cents INTEGER NOT NULL, carrier TEXT, tracking TEXT, expected_on TEXT,
    delivered_on TEXT)"""


def seed_rows(seed: int = SEED) -> list[tuple[Any, ...]]:
    """The orders, drawn from a fixed seed: the same rows on every machine."""
    rng = random.Random(seed)
    rows = []
    for order_id in range(FIRST, LAST + 1):
        status = rng.choices(list(STATUSES), weights=list(STATUSES.values()))[0]
        placed = TODAY - timedelta(days=rng.randint(1, 60))
        picked = rng.sample(PRODUCTS, rng.randint(1, 3))
        items = ", ".join(name for name, _ in picked)
        total = sum(price for _, price in picked)
        sent = status not in ("processing", "cancelled")
        carrier = rng.choice(CARRIERS) if sent else None
        tracking = f"LK{order_id}{rng.randint(100000, 999999)}" if sent else None
        expected = (placed + timedelta(days=rng.randint(3, 7))).isoformat() if status != "cancelled" else None
        delivered = (placed + timedelta(days=rng.randint(2, 6))).isoformat() if status in (
            "delivered", "return requested", "refunded") else None  # fmt: skip
        rows.append((order_id, rng.choice(NAMES), placed.isoformat(), status, items, total, carrier, tracking,
                     expected, delivered))  # fmt: skip
    return rows


def ensure_db(path: str | Path = DEFAULT_DB) -> Path:
    """The orders database at ``path``, created and seeded first if it does not exist yet."""
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if path.is_file():  # another process seeded it while we waited
            return path
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            with sqlite3.connect(tmp) as db:
                db.execute(SCHEMA)
                db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", seed_rows())
            db.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path


class Orders:
    """Read-only access to the orders database (created on first use)."""

    def __init__(self, path: str | Path = DEFAULT_DB) -> None:
        self.path = ensure_db(path)

    def get(self, order_id: int) -> dict[str, Any] | None:
        """The order as a dict, or ``None`` when there is no such order."""
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        db.close()
        return None if row is None else dict(row)

    def count(self) -> int:
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as db:
            (n,) = db.execute("SELECT COUNT(*) FROM orders").fetchone()
        db.close()
        return n

    def lookup(self, order_id: int) -> dict[str, Any]:
        """What the ``lookup_order`` tool returns: the order's status and dates, or why there is none."""
        if isinstance(order_id, bool) or not isinstance(order_id, int):
            return {"found": False, "error": f"{order_id!r} is not an order number ({FIRST}-{LAST})"}
        order = self.get(order_id)
        if order is None:
            return {"found": False, "order_id": order_id,
                    "error": f"there is no order {order_id}; order numbers run from {FIRST} to {LAST}"}  # fmt: skip
        order["total"] = f"€{order.pop('total_cents') / 100:.2f}"
        return {"found": True, **{k: v for k, v in order.items() if v is not None}}
