"""Records: the schema (``tables``), engines and transactions (``session``), migrations
(``migrate``), and the queries for uploads, scores and artifacts (``uploads``) and tenants and
API keys (``tenants``). The job state machine is ``slimline.jobs``.

Nothing here connects or reads settings at import time. Rows never leave this package or
``slimline.jobs``: every query returns frozen dataclasses.
"""
