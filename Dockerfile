# slimline: the API (`uvicorn slimline.service.app:create_app --factory`), the workers
# (`slimline worker`) and the one-shot migration (`python -m slimline.db.migrate`) all run this
# image; docker-compose.yml picks the command. Settings come from SLIMLINE_* variables.
#
#   docker build -t slimline:latest .
#
# This is a CPU-based image. GPU workers should build from a CUDA base instead (for example
# nvidia/cuda:12.x-runtime or a pytorch/pytorch CUDA image) with the matching torch CUDA wheel;
# the rest of this file stays the same. (On Linux x86_64, PyPI's torch wheel may itself pull
# the CUDA libraries; pass --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# for a small CPU-only image.)
FROM python:3.11-slim

ARG TORCH=torch==2.13.0
ARG TORCH_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SLIMLINE_DATA_DIR=/data

WORKDIR /app

# torch first, pinned, so installing the project (torch>=2.5,<2.15) pulls no other build.
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH"

# Then the project. Editable, from /app: `slimline.db.migrate` finds migrations/ and
# alembic.ini next to the package, as in a checkout.
COPY pyproject.toml README.md alembic.ini ./
COPY migrations ./migrations
COPY slimline ./slimline
RUN pip install -e .

# Not root. /data holds the embedded defaults and the shared artifact volume (compose mounts
# it at /data/artifacts; a named volume takes this directory's owner on first use).
RUN useradd --create-home --uid 10001 slimline \
    && mkdir -p /data/artifacts \
    && chown -R slimline:slimline /data
USER slimline

EXPOSE 8000
CMD ["uvicorn", "slimline.service.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
