from twisted.application.service import ServiceMaker

zmirror = ServiceMaker(
    "ZMirror",
    "zmirror.tap",
    "Docker/OCI registry pull proxy / Docker 镜像拉取代理",
    "zmirror",
)
