"""Module 8's agent and its industry case: tools as typed functions, tool calls decoded under a JSON-schema
grammar, a bounded agent loop, and a customer-support desk (help centre, orders database, sentiment, hand-over)."""
