"""Records (Postgres in deployment, SQLite in the embedded default), one module per concern:

- ``tables``: the schema (SQLAlchemy 2.0); ``migrate``: Alembic upgrade/downgrade + prestart;
- ``session``: ``make_engine``, ``session_scope``, ``ping``;
- ``job_records``: jobs and events as frozen records, and their reads (get, list, events);
- ``sweep``: the sweeper; ``tenants``: tenants and API keys;
- ``uploads``: uploaded models and datasets; ``artifacts``: artifact records and scores.

The job state machine is ``slimline.jobs``, which re-exports the job and tenant functions.
Nothing here connects or reads settings at import time. Rows never leave this package or
``slimline.jobs``: every query returns frozen dataclasses.
"""
