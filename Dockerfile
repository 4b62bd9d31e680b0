# appgateway image: `docker build -t appgateway:0.1.0 .`
# Dependencies come from uv.lock (exact versions, hashes checked); the runtime image has no
# build tools, runs as a non-root user and works with a read-only root filesystem (Python
# writes no bytecode at run time; temporary key files go to /tmp, an emptyDir in deploy/).
# The build stage compiles the data-path modules with mypyc (scripts/build_native.py, using the
# dev tools in a throw-away environment); the wheel carries the extension modules.
FROM python:3.11-slim-bookworm AS build
# UV_NATIVE_TLS: uv trusts the system CA store (/etc/ssl/certs), like pip and apt, so a build
# behind a TLS-inspecting proxy works once that store holds the proxy's CA (`make image` mounts
# the build machine's bundle there).
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_NATIVE_TLS=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv==0.9.7
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN UV_PROJECT_ENVIRONMENT=/opt/appgateway \
    uv sync --frozen --no-dev --no-install-project --python /usr/local/bin/python3.11
COPY appgateway ./appgateway
COPY scripts/build_native.py ./scripts/
RUN UV_PROJECT_ENVIRONMENT=/opt/build uv sync --frozen --python /usr/local/bin/python3.11 \
    && /opt/build/bin/python scripts/build_native.py
RUN UV_PROJECT_ENVIRONMENT=/opt/appgateway \
    uv sync --frozen --no-dev --no-editable --python /usr/local/bin/python3.11

FROM python:3.11-slim-bookworm
COPY --from=build /opt/appgateway /opt/appgateway
ENV PATH=/opt/appgateway/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --gid 10001 appgateway \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin appgateway
USER 10001:10001
EXPOSE 8080 8081 8082
ENTRYPOINT ["appgateway"]
CMD ["serve", "--kubernetes", "--host", "0.0.0.0"]
