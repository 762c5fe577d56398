# lmcache server (the shared cache server, remote_url: lm://HOST:65432) from the CLI's publish output. From the repository root:
#   dotnet publish src/LMCacheSharp.Cli -c Release -o artifacts/publish
#   docker build -f docker/server.Dockerfile -t lmcachesharp/server .
#   docker run --rm -p 65432:65432 -v lmcache-server:/cache lmcachesharp/server --capacity 8GB --disk /cache --disk-capacity 100GB
# Arguments after the image name go to `lmcache server`; LMCACHE_SERVER_* variables work too, and so does a mounted
# settings file (--config /etc/lmcache/server.yaml, or LMCACHE_SERVER_CONFIG_FILE). The server itself has no
# TLS: publish its port only on a trusted network, and set LMCACHE_SERVER_AUTH_TOKEN. CI runs this publish output as the
# image does (docs/deploy.md); it builds no image.
FROM mcr.microsoft.com/dotnet/aspnet:10.0
RUN mkdir -p /cache && chown "$APP_UID" /cache
WORKDIR /app
COPY artifacts/publish/ /app/
USER $APP_UID
# Variables, not flags, so that a flag given to `docker run` still wins.
ENV LMCACHE_SERVER_HOST=0.0.0.0 LMCACHE_SERVER_PORT=65432
VOLUME ["/cache"]
EXPOSE 65432 9090
ENTRYPOINT ["dotnet", "/app/lmcache.dll", "server"]
