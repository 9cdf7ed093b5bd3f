# Debian's nginx (the one the tests check docs/cluster/nginx.conf with) plus curl for the health
# check; the config files are mounted by docker-compose.yml.
# Debian 的 nginx（测试所用的同一版本）加上健康检查用的 curl；配置文件由 docker-compose.yml 挂载。
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stdout /var/log/nginx/zmirror-access.log \
 && ln -sf /dev/stderr /var/log/nginx/zmirror-error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-c", "/etc/nginx/zmirror/nginx.conf", "-g", "daemon off;"]
