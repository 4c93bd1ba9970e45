"""The REST API (FastAPI): ``create_app(settings)`` builds it; routes are thin and call
``slimline.jobs`` and ``slimline.db``; nothing here imports torch (inspection and training are
worker tasks, sent by name through ``slimline.enqueue``)."""
