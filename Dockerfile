# Placeholder until the operations issue: a runnable image of the Python service.
FROM python:3.11-slim
WORKDIR /app
COPY . /src
RUN pip install --no-cache-dir /src && useradd -r -u 10001 zmirror && mkdir -p /app/data && chown zmirror /app/data
USER zmirror
VOLUME /app/data
EXPOSE 8080
CMD ["twistd", "-n", "--pidfile=", "zmirror", "--data", "/app/data"]
