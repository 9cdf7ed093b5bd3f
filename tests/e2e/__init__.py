"""End-to-end tests: real upstream registries (Debian ``docker-registry``),
real clients (``skopeo``, podman, docker, ctr) and ``twistd zmirror`` on 127.0.0.1.

``harness.py`` starts registries and zmirror instances; ``environment.py`` the set the
suite shares; ``images.py`` builds the test images; ``clients.py`` and ``httpclient.py``
are the clients; ``faultproxy.py`` injects faults and paces.  The tests skip with a
clear message when ``docker-registry`` or ``skopeo`` is not installed
(``scripts/system-deps.sh`` installs them on Debian).
"""
