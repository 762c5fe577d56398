# lmcache serve (the OpenAI-compatible server with the KV cache) from the CLI's publish output. Build from the repository root:
#   dotnet publish src/LMCacheSharp.Cli -c Release -o artifacts/publish
#   docker build -f docker/serve.Dockerfile -t lmcachesharp/serve .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" lmcachesharp/serve --model /models/your.gguf
# Arguments after the image name go to `lmcache serve`. Without --model it serves a generated model with random weights
# (kept in /data). The disk tier is off unless LMCACHE_LOCAL_DISK=/cache and LMCACHE_MAX_LOCAL_DISK_SIZE=GiB are set
# (compose.yaml sets them). CI runs this publish output as the image does (docs/deploy.md); it builds no image.
FROM mcr.microsoft.com/dotnet/aspnet:10.0
# llama.cpp's CPU backend (libggml-cpu.so) links OpenMP's runtime, which the ASP.NET Core image does not ship.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /models /cache /data && chown "$APP_UID" /cache /data
WORKDIR /app
COPY artifacts/publish/ /app/
USER $APP_UID
ENV LMCACHE_HOME=/data
VOLUME ["/models", "/cache", "/data"]
EXPOSE 8000
ENTRYPOINT ["dotnet", "/app/lmcache.dll", "serve", "--host", "0.0.0.0", "--port", "8000"]
