"""End-to-end tests: real upstream registries (Debian ``docker-registry``),
real clients (``skopeo``) and ``twistd zmirror`` on 127.0.0.1.

``harness.py`` starts and seeds everything; the tests skip with a clear
message when ``docker-registry`` or ``skopeo`` is not installed
(``scripts/system-deps.sh`` installs them on Debian).
"""
