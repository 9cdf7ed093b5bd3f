import os
import stat
from pathlib import Path

from twisted.trial import unittest

from zmirror.config import DEFAULT_CONFIG, ConfigError, load_config, parse_config, parse_size


class LoadConfigTests(unittest.TestCase):
    def setUp(self):
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.data = self.base / "data"

    def test_first_start_writes_default(self):
        cfg = load_config(self.data)
        path = self.data / "config.toml"
        self.assertTrue(path.exists())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(path.read_text(), DEFAULT_CONFIG)
        self.assertEqual(cfg.server.host, "0.0.0.0")
        self.assertEqual(cfg.server.port, 8080)
        self.assertEqual(cfg.admin.username, "admin")
        self.assertEqual(cfg.admin.password, "admin123")
        self.assertTrue(cfg.admin_password_is_default)
        # registry.db and cache inside the data dir
        self.assertEqual(cfg.database_path, self.data / "registry.db")
        self.assertEqual(cfg.cache_dir, self.data / "cache")
        self.assertEqual(cfg.warnings, ())

    def test_existing_never_overwritten(self):
        self.data.mkdir()
        path = self.data / "config.toml"
        path.write_text('[server]\nport = 9090\n')
        cfg = load_config(self.data)
        self.assertEqual(cfg.server.port, 9090)
        self.assertEqual(path.read_text(), '[server]\nport = 9090\n')
        self.assertFalse(cfg.admin_password_is_default is False and cfg.admin.password != "admin123")

    def test_explicit_config_missing(self):
        with self.assertRaises(ConfigError) as e:
            load_config(self.data, self.base / "nope.toml")
        self.assertIn("nope.toml", str(e.exception))


class ParseTests(unittest.TestCase):
    def parse(self, text):
        return parse_config(text, data_dir=Path("/srv/d"), config_path=Path("/srv/d/config.toml"))

    def test_invalid_toml_names_line_and_column(self):
        with self.assertRaises(ConfigError) as e:
            self.parse('[server]\nport = = 3\n')
        msg = str(e.exception)
        self.assertIn("/srv/d/config.toml", msg)
        self.assertIn("line 2", msg)
        self.assertIn("column", msg)
        self.assertNotIn("\n", msg)

    def test_routing_hosts(self):
        c = self.parse('[routing]\nhosts = { "GHCR.Mirror.example.com" = "GHCR.io", '
                       '"hub.mirror.example.com:8443" = "index.docker.io" }\n')
        self.assertEqual(dict(c.routing.hosts), {"ghcr.mirror.example.com": "ghcr.io",
                                                 "hub.mirror.example.com:8443": "docker.io"})
        self.assertEqual(self.parse("").routing.hosts, ())
        for bad in ('hosts = "ghcr.io"', 'hosts = { "a b" = "ghcr.io" }', 'hosts = { "m.example" = "nodot" }',
                    'hosts = { "m.example" = 5 }', 'hosts = { "m.example:0" = "ghcr.io" }'):
            with self.assertRaises(ConfigError, msg=bad) as e:
                self.parse(f"[routing]\n{bad}\n")
            self.assertIn("routing.hosts", str(e.exception))

    def test_port_range(self):
        for bad in ("0", "65536", "-1"):
            with self.assertRaises(ConfigError) as e:
                self.parse(f"[server]\nport = {bad}\n")
            self.assertIn("server.port", str(e.exception))

    def test_wrong_type(self):
        with self.assertRaises(ConfigError) as e:
            self.parse('[server]\nport = "80"\n')
        self.assertIn("server.port", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            self.parse('[cache]\nenabled = "yes"\n')
        self.assertIn("cache.enabled", str(e.exception))

    def test_empty_admin_username(self):
        with self.assertRaises(ConfigError) as e:
            self.parse('[admin]\nusername = ""\n')
        self.assertIn("admin.username", str(e.exception))

    def test_unknown_keys_warn(self):
        cfg = self.parse('[server]\nport = 80\ncolour = "red"\n[extra]\na = 1\n')
        self.assertEqual(cfg.server.port, 80)
        self.assertEqual(len(cfg.warnings), 2)
        self.assertIn("server.colour", cfg.warnings[0])
        self.assertIn("[extra]", cfg.warnings[1])

    def test_choices_and_proxies(self):
        with self.assertRaises(ConfigError):
            self.parse('[access]\nanonymous = "some"\n')
        with self.assertRaises(ConfigError):
            self.parse('[server]\ntrusted_proxies = ["not-an-ip"]\n')
        cfg = self.parse('[server]\ntrusted_proxies = ["10.0.0.0/8", "::1"]\n')
        self.assertEqual(cfg.server.trusted_proxies, ("10.0.0.0/8", "::1"))

    def test_absolute_and_relative_paths(self):
        cfg = self.parse('[database]\npath = "/var/lib/z.db"\n[cache]\ndir = "cachedir"\n')
        self.assertEqual(cfg.database_path, Path("/var/lib/z.db"))
        self.assertEqual(cfg.cache_dir, Path("/srv/d/cachedir"))

    def test_sizes(self):
        self.assertEqual(parse_size("50GB"), 50 * 10**9)
        self.assertEqual(parse_size("512MiB"), 512 * 1024**2)
        self.assertEqual(parse_size(1024), 1024)
        self.assertEqual(parse_size("1.5 GB"), 1_500_000_000)
        with self.assertRaises(ValueError):
            parse_size("lots")
        with self.assertRaises(ConfigError) as e:
            self.parse('[cache]\nmax_size = "big"\n')
        self.assertIn("cache.max_size", str(e.exception))


class LockoutSectionTests(unittest.TestCase):
    def parse(self, text):
        return parse_config(text, data_dir=Path("/srv/d"), config_path=Path("/srv/d/config.toml"))

    def test_defaults_are_the_old_fixed_values(self):
        from zmirror.config import LockoutConfig

        for cfg in (self.parse(""), self.parse(DEFAULT_CONFIG)):
            self.assertEqual(cfg.lockout, LockoutConfig())
            self.assertEqual((cfg.lockout.max_account_failures, cfg.lockout.max_ip_failures,
                              cfg.lockout.window, cfg.lockout.cooldown), (10, 30, 600, 300))
        self.assertEqual(self.parse(DEFAULT_CONFIG).warnings, ())

    def test_values(self):
        cfg = self.parse("[lockout]\nmax_account_failures = 5\nmax_ip_failures = 100\n"
                         "window = 60\ncooldown = 3600\n")
        self.assertEqual((cfg.lockout.max_account_failures, cfg.lockout.max_ip_failures,
                          cfg.lockout.window, cfg.lockout.cooldown), (5, 100, 60, 3600))

    def test_bad_values_name_the_key(self):
        for key in ("max_account_failures", "max_ip_failures", "window", "cooldown"):
            for bad in ("0", "-1", "2.5", '"10"', "true", "[]"):
                with self.assertRaises(ConfigError, msg=f"{key} = {bad}") as e:
                    self.parse(f"[lockout]\n{key} = {bad}\n")
                msg = str(e.exception)
                self.assertIn(f"lockout.{key}", msg)
                self.assertIn("/srv/d/config.toml", msg)
                self.assertNotIn("\n", msg)
        with self.assertRaises(ConfigError) as e:
            self.parse("[lockout]\nwindow = 99999999\n")
        self.assertIn("must be between 1 and", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            self.parse("lockout = 3\n")
        self.assertIn("expected a table [lockout]", str(e.exception))

    def test_unknown_key_warns(self):
        cfg = self.parse("[lockout]\nmax_failures = 3\n")
        self.assertEqual(cfg.lockout.max_account_failures, 10)
        self.assertEqual(len(cfg.warnings), 1)
        self.assertIn("lockout.max_failures", cfg.warnings[0])


class CacheLimitSettingsTests(unittest.TestCase):
    """[cache] transfer_threads, max_temp_size, max_orphans, max_orphan_size."""

    def parse(self, text):
        return parse_config(text, data_dir=Path("/srv/d"), config_path=Path("/srv/d/config.toml"))

    def test_defaults_are_the_blob_cache_defaults(self):
        from zmirror.cache.blobs import MAX_ORPHAN_BYTES, MAX_ORPHANS
        from zmirror.config import CacheConfig
        from zmirror.transfer.threads import TRANSFER_THREADS

        for cfg in (self.parse(""), self.parse(DEFAULT_CONFIG)):
            self.assertEqual(cfg.cache, CacheConfig())
            c = cfg.cache
            self.assertEqual((c.transfer_threads, c.max_temp_size, c.max_orphans, c.max_orphan_size),
                             (TRANSFER_THREADS, 0, MAX_ORPHANS, MAX_ORPHAN_BYTES))
        self.assertEqual(self.parse(DEFAULT_CONFIG).warnings, ())

    def test_values(self):
        c = self.parse('[cache]\ntransfer_threads = 4\nmax_temp_size = "10GB"\nmax_orphans = 0\n'
                       'max_orphan_size = "512MiB"\n').cache
        self.assertEqual((c.transfer_threads, c.max_temp_size, c.max_orphans, c.max_orphan_size),
                         (4, 10 * 10**9, 0, 512 << 20))
        c = self.parse("[cache]\nmax_temp_size = 1000\nmax_orphan_size = 0\n").cache
        self.assertEqual((c.max_temp_size, c.max_orphan_size), (1000, 0))

    def test_bad_values_name_the_key(self):
        cases = {
            "transfer_threads": ("0", "-1", "257", "2.5", '"4"', "true"),
            "max_orphans": ("-1", "10001", "1.5", '"4"', "false"),
            "max_temp_size": ('"lots"', "-1", '"-5GB"', "true", "[]"),
            "max_orphan_size": ('"2 gigs"', "-1", "false", "{}"),
        }
        for key, bads in cases.items():
            for bad in bads:
                with self.assertRaises(ConfigError, msg=f"{key} = {bad}") as e:
                    self.parse(f"[cache]\n{key} = {bad}\n")
                msg = str(e.exception)
                self.assertIn(f"cache.{key}", msg)
                self.assertIn("/srv/d/config.toml", msg)
                self.assertNotIn("\n", msg)

    def test_default_config_explains_them_in_both_languages(self):
        text = DEFAULT_CONFIG.split("[cache]", 1)[1].split("\n[", 1)[0]
        for key in ("transfer_threads", "max_temp_size", "max_orphans", "max_orphan_size"):
            lines = text.splitlines()
            at = next(i for i, ln in enumerate(lines) if ln.startswith(f"{key} ="))
            above = []
            for ln in reversed(lines[:at]):
                if not ln.startswith("#"):
                    if above:
                        break
                    continue
                above.append(ln)
            comment = " ".join(above)
            self.assertRegex(comment, r"[A-Za-z]{4}", key)
            self.assertRegex(comment, r"[\u4e00-\u9fff]", key)


class CacheLimitWiringTests(unittest.TestCase):
    def test_build_passes_the_cache_limits(self):
        from twisted.internet import reactor

        from zmirror.wiring import build

        data = Path(self.mktemp()).resolve()
        data.mkdir()
        (data / "config.toml").write_text(
            '[cache]\nmax_size = "1GB"\ntransfer_threads = 3\nmax_temp_size = "200MB"\n'
            'max_orphans = 2\nmax_orphan_size = "100MB"\n')
        components = build(load_config(data), reactor)
        blobs = components.blob_cache
        self.addCleanup(blobs.transfers.stop)
        self.assertEqual((blobs.max_size, blobs.transfers.size, blobs.max_temp_bytes, blobs.max_orphans,
                          blobs.max_orphan_bytes), (10**9, 3, 200 * 10**6, 2, 100 * 10**6))
        summary = blobs.summary()
        self.assertEqual((summary["transfer_threads"], summary["max_temp_bytes"]), (3, 200 * 10**6))

    def test_temp_limit_defaults_to_the_cache_size(self):
        from twisted.internet import reactor

        from zmirror.wiring import build

        data = Path(self.mktemp()).resolve()
        data.mkdir()
        (data / "config.toml").write_text('[cache]\nmax_size = "1GB"\n')
        blobs = build(load_config(data), reactor).blob_cache
        self.addCleanup(blobs.transfers.stop)
        self.assertEqual(blobs.max_temp_bytes, 10**9)


class PrivateModeTests(unittest.TestCase):
    """The data and cache directories are 0700 whatever the umask."""

    def setUp(self):
        old = os.umask(0o022)  # permissive: directories 0755 by default
        self.addCleanup(os.umask, old)
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()

    def mode(self, p):
        return stat.S_IMODE(os.stat(p).st_mode)

    def test_new_data_dir_private(self):
        data = self.base / "a" / "data"
        cfg = load_config(data)
        self.assertEqual(self.mode(data), 0o700)
        self.assertEqual(self.mode(data / "config.toml"), 0o600)
        self.assertEqual(cfg.warnings, ())

    def test_existing_loose_data_dir_restricted_with_a_warning(self):
        data = self.base / "data"
        data.mkdir()
        os.chmod(data, 0o755)
        cfg = load_config(data)
        self.assertEqual(self.mode(data), 0o700)
        self.assertEqual(len(cfg.warnings), 1, cfg.warnings)
        self.assertIn("0755", cfg.warnings[0])
        self.assertIn("0700", cfg.warnings[0])
        self.assertEqual(load_config(data).warnings, (), "fixed once")

    def test_cache_dir_private(self):
        from zmirror.cache.blobindex import scan, sweep_tmp

        for existing in (False, True):
            root = self.base / f"cache-{existing}"
            if existing:
                root.mkdir()
                os.chmod(root, 0o755)
            sweep_tmp(root)  # (thread functions, run here directly)
            self.assertEqual(self.mode(root), 0o700, existing)
            os.chmod(root, 0o750)
            scan(root)  # every start
            self.assertEqual(self.mode(root), 0o700, existing)


class NodeNameTests(unittest.TestCase):
    """[server] node: this node's name in the access log of a cluster."""

    def parse(self, text):
        return parse_config(text, data_dir=Path("/srv/d"), config_path=Path("/srv/d/config.toml"))

    def test_default_is_the_host_name(self):
        import socket

        for cfg in (self.parse(""), self.parse(DEFAULT_CONFIG)):
            self.assertEqual(cfg.server.node, socket.gethostname()[:64])
        self.assertEqual(self.parse(DEFAULT_CONFIG).warnings, ())

    def test_default_of_an_odd_host_name(self):
        import socket

        from zmirror import config as mod

        self.patch(socket, "gethostname", lambda: "my host\x01" + "x" * 100)
        self.assertEqual(mod.default_node_name(), ("myhost" + "x" * 100)[:64])
        self.patch(socket, "gethostname", lambda: " \t")
        self.assertEqual(mod.default_node_name(), "zmirror")

    def test_values(self):
        for name in ("node-1", "mirror.example.com", "节点一", "a" * 64, "10.0.0.7:8081"):
            self.assertEqual(self.parse(f'[server]\nnode = "{name}"\n').server.node, name)

    def test_bad_values_name_the_key(self):
        for bad in ('""', '"a b"', '"tab\\there"', '"nul\\u0000"', '"nl\\n"', '"bell\\u0007"',
                    '"' + "a" * 65 + '"', "7", "true", '["a"]'):
            with self.assertRaises(ConfigError, msg=bad) as e:
                self.parse(f"[server]\nnode = {bad}\n")
            msg = str(e.exception)
            self.assertIn("server.node", msg)
            self.assertIn("/srv/d/config.toml", msg)
            self.assertNotIn("\n", msg)
            self.assertNotIn("\x00", msg)

    def test_default_config_explains_it_in_both_languages(self):
        text = DEFAULT_CONFIG.split("[server]", 1)[1].split("\n[", 1)[0]
        lines = text.splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.startswith("# node ="))
        above = []
        for ln in reversed(lines[:at]):
            if not ln.startswith("#"):
                break
            above.append(ln)
        comment = " ".join(above)
        self.assertIn("access log", comment)
        self.assertIn("访问日志", comment)
        self.assertIn("host name", comment)
        self.assertIn("主机名", comment)
        # the commented example is a valid value
        example = lines[at][2:]
        self.assertEqual(self.parse(f"[server]\n{example}\n").server.node, "mirror-1")


class TagLimitConfigTests(unittest.TestCase):
    def parse(self, text):
        return parse_config(text, data_dir=Path("/srv/d"), config_path=Path("/srv/d/config.toml"))

    def test_manifest_tags_in_memory_configurable(self):
        self.assertEqual(self.parse("").cache.manifest_tags_in_memory, 100_000)
        self.assertEqual(self.parse("[cache]\nmanifest_tags_in_memory = 500\n").cache.manifest_tags_in_memory, 500)
        with self.assertRaises(ConfigError):
            self.parse("[cache]\nmanifest_tags_in_memory = 0\n")


class UpstreamProxyConfigTests(unittest.TestCase):
    """[upstream] proxy and no_proxy: checked, absent vs. empty known (the environment)."""

    def parse(self, text):
        return parse_config(text, data_dir=Path("/srv/d"), config_path=Path("/srv/d/config.toml"))

    def test_absent_keys_mean_the_environment(self):
        for cfg in (self.parse(""), self.parse(DEFAULT_CONFIG), self.parse("[upstream]\ncooldown = 5\n")):
            self.assertIsNone(cfg.upstream.proxy)
            self.assertIsNone(cfg.upstream.no_proxy)
            self.assertTrue(cfg.upstream.proxy_from_environment)
        self.assertEqual(self.parse(DEFAULT_CONFIG).warnings, ())

    def test_present_keys_replace_the_environment(self):
        cfg = self.parse('[upstream]\nproxy = ""\n')
        self.assertEqual(cfg.upstream.proxy, "")  # direct, whatever the environment says
        self.assertFalse(cfg.upstream.proxy_from_environment)
        cfg = self.parse('[upstream]\nno_proxy = ".corp.example"\n')
        self.assertIsNone(cfg.upstream.proxy)
        self.assertFalse(cfg.upstream.proxy_from_environment)

    def test_values_normalized(self):
        cfg = self.parse('[upstream]\nproxy = " HTTP://u:p%40ss@Proxy.Example:3128/ "\n'
                         'no_proxy = "localhost, .corp.example  10.0.0.0/8,[::1]:5000"\n')
        self.assertEqual(cfg.upstream.proxy, "http://u:p%40ss@proxy.example:3128")
        self.assertEqual(cfg.upstream.no_proxy, "localhost,.corp.example,10.0.0.0/8,[::1]:5000")
        for url in ("socks5://127.0.0.1:1080", "socks5h://user:pw@tunnel.example:1080", "http://proxy:8080"):
            self.assertEqual(self.parse(f'[upstream]\nproxy = "{url}"\n').upstream.proxy, url)
        # without a port: the one the agents use (1080, as curl), written out
        self.assertEqual(self.parse('[upstream]\nproxy = "http://proxy"\n').upstream.proxy, "http://proxy:1080")

    def test_bad_values_name_the_key_and_hide_the_password(self):
        for bad in ('"ftp://u:SECRETpw@h:21"', '"https://u:SECRETpw@h:443"', '"u:SECRETpw@host:3128"',
                    '"http://u:SECRETpw@h:99999"', '"http://u:SECRETpw@:3128"',
                    '"http://u:SECRETpw@h:3128/path"', '"http://u:SECRETpw@h:3128?x=1"',
                    '"http://u:SECRETpw@h 1:3128"', '"socks5://u:SECRETpw%s@h:1080"' % ("x" * 256), "3128",
                    "true"):
            with self.assertRaises(ConfigError, msg=bad) as e:
                self.parse(f"[upstream]\nproxy = {bad}\n")
            msg = str(e.exception)
            self.assertIn("upstream.proxy", msg)
            self.assertNotIn("SECRETpw", msg)
            self.assertNotIn("\n", msg)
        for bad in ('"host;rm"', "[\"a\"]", '"a,b\\u0000"', '"10.0.0.0/33"', '"*foo.example"', '"host:99999"'):
            with self.assertRaises(ConfigError, msg=bad) as e:
                self.parse(f"[upstream]\nno_proxy = {bad}\n")
            self.assertIn("upstream.no_proxy", str(e.exception))

    def test_default_config_explains_them_in_both_languages(self):
        text = DEFAULT_CONFIG.split("[upstream]", 1)[1].split("\n[", 1)[0]
        self.assertIn("# proxy = ", text)
        self.assertIn("# no_proxy = ", text)
        self.assertIn("HTTPS_PROXY", text)
        self.assertIn("环境变量", text)
        # the commented examples are valid values
        examples = "\n".join(ln[2:] for ln in text.splitlines() if ln.startswith(("# proxy =", "# no_proxy =")))
        cfg = self.parse(f"[upstream]\n{examples}\n")
        self.assertEqual(cfg.upstream.proxy, "http://user:password@proxy.example:3128")
