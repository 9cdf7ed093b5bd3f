import os

from setuptools import find_namespace_packages, setup

here = os.path.abspath(os.path.dirname(__file__))
about = {}
with open(os.path.join(here, "zmirror", "__init__.py")) as f:
    exec(f.read(), about)


def webui_files():
    base = os.path.join(here, "zmirror")
    out = []
    for root, _dirs, files in os.walk(os.path.join(base, "webui")):
        for name in files:
            out.append(os.path.relpath(os.path.join(root, name), base))
    return out


setup(
    name="zmirror",
    version=about["__version__"],
    description="Docker/OCI registry pull proxy on Twisted",
    long_description=open(os.path.join(here, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    # the packages sit at the root: an editable install (make deps) is then a path entry for
    # the repository root, which the twistd plugin (twisted/plugins/) and the tests need
    package_dir={"": "."},
    # directories of data files (db/migrations, webui) are packages too, so that setuptools
    # does not warn that it would ignore them
    packages=find_namespace_packages(include=["zmirror", "zmirror.*"], exclude=["*.__pycache__"])
    + ["twisted.plugins"],
    package_data={
        "zmirror": ["db/migrations/*.sql", "config/default.toml"] + webui_files(),
        "twisted": ["plugins/zmirror_plugin.py"],
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=23.8",
        "treq>=23.11",
        "klein>=23.5",
        "werkzeug>=2.3",  # parse_range_header (comes with klein; used directly)
        "txaio>=23.1",
        "toml>=0.10",
        "tomlkit>=0.11",  # edits config.toml keeping its comments (admin password change)
        "passlib>=1.7.4",
        "argon2-cffi>=21.3",
        "PyJWT>=2.8",
        "prometheus_client>=0.17",
        "psycopg[binary]>=3.1",  # PostgreSQL ([database] url); SQLite needs nothing
        "croniter>=2.0",  # cron-style schedules of sync jobs (zmirror/sync/schedule.py)
    ],
    extras_require={
        "test": ["hypothesis>=6.80", "selenium>=4.15", "cryptography>=41", "bcrypt>=4.0",
                 "PyYAML>=6.0"],  # tests/test_cluster_docs.py reads docs/cluster/docker-compose.yml
        "dev": ["ruff>=0.4", "hupper>=1.12"],
    },
    entry_points={"console_scripts": ["zmirror=zmirror.cli:main"]},
    zip_safe=False,
    classifiers=["Framework :: Twisted"],  # the licence: license="MIT" above
)
