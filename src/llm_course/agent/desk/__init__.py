"""The support desk of a fictional shop: its help-centre pages, its orders database, its sentiment classifier and
its routing (answer, look an order up, or hand over to a human)."""
