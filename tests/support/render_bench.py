#!/usr/bin/env python3
"""Render bench's own deployment templates (frappe-bench 5.31.1) for a given bench.

Nothing here imitates bench's output: the templates are bench's own files, taken at run time
from the frappe-bench wheel on PyPI and rendered with jinja2, with a context built the way
bench's Python builds it (bench/config/supervisor.py, systemd.py and nginx.py). Neither the
wheel nor anything extracted from it is committed; it lives in a git-ignored cache.

Render contract
---------------

    python3 tests/support/render_bench.py --bench-dir DIR --bench-name NAME --site SITE \
        --socketio-port P --webserver-port W --out OUTDIR [--user USER] [--realtime-bin PATH]

writes into OUTDIR (created if missing):

  supervisor.conf               bench's supervisor.conf, whole, as `bench setup supervisor`
                                renders it (Node command left as is)
  nginx.conf                    bench's nginx.conf, whole, as `bench setup nginx` renders it
                                (its `location /socket.io` block unchanged)
  <NAME>-node-socketio.service  bench's systemd unit, as `bench setup systemd` renders it
  socketio-block.conf           only the `[program:<NAME>-node-socketio]` block of
                                supervisor.conf; with --realtime-bin its `command=` line is
                                `command=<PATH>`, every other line as rendered
  render-context.json           the values used (for debugging; not part of the contract)

Context, as bench computes it (bench reads these from the bench's files and the machine):
  bench_dir      absolute --bench-dir        bench_name   --bench-name (bench: basename of dir)
  user           --user, else the current user
  socketio_port  --socketio-port             webserver_port  --webserver-port
                 (both win over sites/common_site_config.json, which is read for the rest:
                 http_timeout, gunicorn_workers, gunicorn_max_requests, background_workers,
                 workers, dns_multitenant, allow_rate_limiting, wildcard)
  sites          --site (repeatable); each site's sites/<site>/site_config.json, if present, is
                 read for nginx_port, ssl_certificate(_key) and domains, as bench does. Without
                 dns_multitenant the first site listens on nginx_port or 80 (--nginx-port sets
                 nginx_port for every given site, e.g. an unprivileged port in tests)
  bench_cmd      --bench-cmd, else `which bench`, else /usr/local/bin/bench
  node           `which node` or `which nodejs`; socketio_enabled is always true (bench drops
                 the socketio block when no node is installed; we always want it)
  redis_server   `which redis-server`, else /usr/bin/redis-server
  multi_queue_consumption  frappe version (apps/frappe/frappe/__init__.py) > 14.18.0

Cache: --cache-dir, else $RENDER_BENCH_CACHE, else <repo>/.cache/frappe-bench/. The wheel is
fetched with `python3 -m pip download --no-deps frappe-bench==5.31.1` (without pip: found in
PyPI's simple index and fetched with urllib) and its sha256 checked against the pinned one.
jinja2 is imported if installed (Debian: python3-jinja2), else installed with
`pip install --target <repo>/.cache/pylib jinja2~=3.1.3`.
Safe to run concurrently (downloads and extraction go through temporary dirs and renames).

Exit status: 0 on success; 1 with a message on stderr on any failure.
"""

import argparse
import getpass
import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import string
import subprocess
import sys
import tempfile
import zipfile

BENCH_VERSION = "5.31.1"
WHEEL = f"frappe_bench-{BENCH_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "8d0eb9d0ae4acc73c1fb1aa7d55b98c69e5867feffaa2b944db26839036ed7a9"
TEMPLATES_IN_WHEEL = "bench/config/templates/"
JINJA2_REQ = "jinja2~=3.1.3"  # bench 5.31.1's own requirement
DEFAULT_MAX_REQUESTS = 5000  # bench/config/common_site_config.py

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


class Failure(Exception):
    pass


def log(msg):
    print(f"render_bench: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def pip_cmd():
    return [sys.executable, "-m", "pip"]


def have_pip():
    try:
        r = subprocess.run(pip_cmd() + ["--version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def download_without_pip(dest_dir):
    """No pip (Debian's python3 ships without it): find the one pinned wheel in PyPI's simple
    index (the page pip reads) and fetch it with urllib; the caller checks the sha256."""
    import urllib.parse
    import urllib.request

    index = "https://pypi.org/simple/frappe-bench/"
    log(f"pip is not available; fetching {WHEEL} via {index}")
    try:
        with urllib.request.urlopen(index, timeout=60) as r:
            page = r.read().decode("utf-8", "replace")
        hrefs = [h for h in re.findall(r'href="([^"]+)"', page) if h.split("#")[0].endswith("/" + WHEEL)]
        if not hrefs:
            raise Failure(f"{index} lists no {WHEEL}")
        url = urllib.parse.urljoin(index, hrefs[0].split("#")[0].replace("&amp;", "&"))
        with urllib.request.urlopen(url, timeout=300) as r, open(os.path.join(dest_dir, WHEEL), "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        raise Failure(f"could not download {WHEEL} from PyPI without pip: {e} "
                      "(install pip: apt-get install python3-pip)")


def fetch_wheel(cache):
    os.makedirs(cache, exist_ok=True)
    wheel = os.path.join(cache, WHEEL)
    if os.path.exists(wheel) and sha256(wheel) == WHEEL_SHA256:
        return wheel
    tmp = tempfile.mkdtemp(prefix=".dl-", dir=cache)
    try:
        if not have_pip():
            download_without_pip(tmp)
            got = os.path.join(tmp, WHEEL)
            digest = sha256(got)
            if digest != WHEEL_SHA256:
                raise Failure(f"{WHEEL}: sha256 {digest}, expected {WHEEL_SHA256}")
            os.replace(got, wheel)
            return wheel
        cmd = pip_cmd() + [
            "download", "--no-deps", "--disable-pip-version-check", "--quiet",
            f"frappe-bench=={BENCH_VERSION}", "-d", tmp,
        ]
        log(f"fetching frappe-bench {BENCH_VERSION} from PyPI into {cache}")
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Failure(f"`{' '.join(cmd)}` failed: {e}")
        got = os.path.join(tmp, WHEEL)
        if r.returncode != 0 or not os.path.exists(got):
            raise Failure(
                f"could not download frappe-bench=={BENCH_VERSION} with pip "
                f"(exit {r.returncode}):\n{r.stderr.strip() or r.stdout.strip()}"
            )
        digest = sha256(got)
        if digest != WHEEL_SHA256:
            raise Failure(f"{WHEEL}: sha256 {digest}, expected {WHEEL_SHA256}")
        os.replace(got, wheel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return wheel


def templates_dir(cache):
    """Bench's templates folder, extracted from the wheel (once)."""
    dest = os.path.join(cache, BENCH_VERSION, "templates")
    if os.path.exists(os.path.join(dest, "supervisor.conf")):
        return dest
    wheel = fetch_wheel(cache)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".x-", dir=os.path.dirname(dest))
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.startswith(TEMPLATES_IN_WHEEL) and not n.endswith("/")]
            if not names:
                raise Failure(f"{wheel} holds no {TEMPLATES_IN_WHEEL}")
            for n in names:
                rel = n[len(TEMPLATES_IN_WHEEL):]
                if rel.startswith("/") or ".." in rel.split("/"):
                    raise Failure(f"unexpected path in wheel: {n}")
                out = os.path.join(tmp, "templates", rel)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with z.open(n) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        try:
            os.rename(os.path.join(tmp, "templates"), dest)
        except OSError:
            if not os.path.exists(os.path.join(dest, "supervisor.conf")):
                raise
    except zipfile.BadZipFile as e:
        raise Failure(f"{wheel}: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def import_jinja2():
    try:
        import jinja2  # noqa: F401

        return jinja2
    except ImportError:
        pass
    pylib = os.path.join(REPO, ".cache", "pylib")
    if not os.path.exists(os.path.join(pylib, "jinja2")):
        os.makedirs(os.path.dirname(pylib), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".pylib-", dir=os.path.dirname(pylib))
        try:
            cmd = pip_cmd() + [
                "install", "--disable-pip-version-check", "--quiet", "--no-warn-script-location",
                "--target", tmp, JINJA2_REQ,
            ]
            if not have_pip():
                raise Failure("jinja2 is not importable and pip is not available: "
                              "apt-get install python3-jinja2 (or python3-pip)")
            log(f"jinja2 not importable; installing it into {pylib}")
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if r.returncode != 0 and "externally-managed-environment" in r.stderr:
                    # PEP 668 (Debian): --target does not touch the system, so say so.
                    r = subprocess.run(cmd + ["--break-system-packages"], capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise Failure(f"`{' '.join(cmd)}` failed: {e}")
            if r.returncode != 0:
                raise Failure(f"could not install jinja2 (exit {r.returncode}):\n{r.stderr.strip()}")
            try:
                os.rename(tmp, pylib)
            except OSError:
                if not os.path.exists(os.path.join(pylib, "jinja2")):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, pylib)
    try:
        import jinja2  # noqa: F811

        return jinja2
    except ImportError as e:
        raise Failure(f"jinja2 still not importable from {pylib}: {e}")


# ---------------------------------------------------------------------------------------------
# Context (mirrors bench/config/{supervisor,systemd,nginx}.py)
# ---------------------------------------------------------------------------------------------


def read_json(path):
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise Failure(f"{path}: {e}")


def frappe_version(bench_dir):
    init = os.path.join(bench_dir, "apps", "frappe", "frappe", "__init__.py")
    try:
        with open(init) as f:
            m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
    except OSError:
        return None
    if not m:
        return None
    nums = re.findall(r"\d+", m.group(1))[:3]
    return tuple(int(n) for n in nums) + (0,) * (3 - len(nums)) if nums else None


def prepare_sites(conf, bench_dir, site_names, nginx_port):
    """bench/config/nginx.py get_sites_with_config + use_wildcard_certificate + prepare_sites,
    restricted to the given sites."""
    dns_multitenant = conf.get("dns_multitenant")
    configs = []
    for name in site_names:
        sc = read_json(os.path.join(bench_dir, "sites", name, "site_config.json"))
        if nginx_port is not None:
            sc["nginx_port"] = nginx_port
        configs.append({
            "name": name,
            "port": sc.get("nginx_port"),
            "ssl_certificate": sc.get("ssl_certificate"),
            "ssl_certificate_key": sc.get("ssl_certificate_key"),
        })
        if dns_multitenant and sc.get("domains"):
            for domain in sc["domains"]:
                if isinstance(domain, str):
                    domain = {"domain": domain}
                domain["name"] = name
                configs.append(domain)

    wildcard = conf.get("wildcard")
    if wildcard:
        suffix = wildcard["domain"][1:] if wildcard["domain"].startswith("*") else "." + wildcard["domain"]
        for site in configs:
            if site.get("ssl_certificate"):
                continue
            if (site.get("domain") or site["name"]).endswith(suffix):
                site["ssl_certificate"] = wildcard["ssl_certificate"]
                site["ssl_certificate_key"] = wildcard["ssl_certificate_key"]
                site["wildcard"] = 1

    sites = {"that_use_port": [], "that_use_dns": [], "that_use_ssl": [], "that_use_wildcard_ssl": []}
    domain_map, ports_in_use = {}, {}
    if not dns_multitenant:
        for site in configs:
            if site.get("port"):
                ports_in_use.setdefault(site["port"], []).append(site["name"])
    conflict = False
    for site in configs:
        if dns_multitenant:
            domain = site.get("domain")
            if domain:
                domain_map[domain] = site["name"]
            site_name = domain or site["name"]
            if site.get("wildcard"):
                sites["that_use_wildcard_ssl"].append(site_name)
                if not sites.get("wildcard_ssl_certificate"):
                    sites["wildcard_ssl_certificate"] = site["ssl_certificate"]
                    sites["wildcard_ssl_certificate_key"] = site["ssl_certificate_key"]
            elif site.get("ssl_certificate") and site.get("ssl_certificate_key"):
                sites["that_use_ssl"].append(site)
            else:
                sites["that_use_dns"].append(site_name)
        else:
            if not site.get("port"):
                site["port"] = 80
                if site["port"] in ports_in_use:
                    site["port"] = 8001
                while site["port"] in ports_in_use:
                    site["port"] += 1
            if site["port"] in ports_in_use and site["name"] not in ports_in_use[site["port"]]:
                conflict = True
                ports_in_use[site["port"]].append(site["name"])
            else:
                ports_in_use[site["port"]] = [site["name"]]
            sites["that_use_port"].append(site)
    if not dns_multitenant and conflict:
        shared = {p: n for p, n in ports_in_use.items() if len(n) > 1}
        raise Failure(f"port conflicts between sites: {shared}")
    sites["domain_map"] = domain_map
    return sites


def build_context(args, tdir):
    bench_dir = os.path.abspath(args.bench_dir)
    conf = read_json(os.path.join(bench_dir, "sites", "common_site_config.json"))
    user = args.user or getpass.getuser()
    workers = conf.get("gunicorn_workers", multiprocessing.cpu_count() * 2 + 1)
    max_requests = conf.get("gunicorn_max_requests", 0 if workers <= 1 else DEFAULT_MAX_REQUESTS)
    node = shutil.which("node") or shutil.which("nodejs")
    version = frappe_version(bench_dir)
    bench_name = args.bench_name
    common = {
        "bench_dir": bench_dir,
        "sites_dir": os.path.join(bench_dir, "sites"),
        "user": user,
        "use_rq": not os.path.exists(os.path.join(bench_dir, "apps", "frappe", "frappe", "celery_app.py")),
        "http_timeout": conf.get("http_timeout", 120),
        "redis_server": shutil.which("redis-server") or "/usr/bin/redis-server",
        "node": node,
        "socketio_enabled": True,
        "redis_cache_config": os.path.join(bench_dir, "config", "redis_cache.conf"),
        "redis_queue_config": os.path.join(bench_dir, "config", "redis_queue.conf"),
        "webserver_port": args.webserver_port,
        "gunicorn_workers": workers,
        "gunicorn_max_requests": max_requests,
        "gunicorn_max_requests_jitter": int(max_requests * 0.1),
        "bench_name": bench_name,
        "bench_cmd": args.bench_cmd or shutil.which("bench") or "/usr/local/bin/bench",
    }
    supervisor = dict(common)
    supervisor.update({
        "background_workers": conf.get("background_workers") or 1,
        "skip_redis": False,
        "workers": conf.get("workers", {}),
        "multi_queue_consumption": bool(version and version > (14, 18, 0)),
        "supervisor_startretries": 10,
    })
    n = conf.get("background_workers") or 1
    systemd = dict(common)
    systemd["worker_target_wants"] = " ".join(
        f"{bench_name}-frappe-{kind}-worker@{i + 1}.service"
        for kind in ("default", "short", "long") for i in range(n)
    )
    allow_rate_limiting = conf.get("allow_rate_limiting", False)
    nginx = {
        "sites_path": os.path.join(bench_dir, "sites"),
        "http_timeout": conf.get("http_timeout"),
        "sites": prepare_sites(conf, bench_dir, args.site, args.nginx_port),
        "webserver_port": args.webserver_port,
        "socketio_port": args.socketio_port,
        "bench_name": bench_name,
        "error_pages": {502: os.path.join(tdir, "502.html")},
        "allow_rate_limiting": allow_rate_limiting,
        "random_string": "".join(random.choice(string.ascii_lowercase) for _ in range(7)),
    }
    if allow_rate_limiting:
        nginx["bench_name_hash"] = hashlib.sha256(bench_name.encode()).hexdigest()[:16]
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1024 * 1024)
        nginx["limit_conn_shared_memory"] = int(0.02 * total_mb)
    return {"supervisor": supervisor, "systemd": systemd, "nginx": nginx}


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def socketio_block(supervisor_conf, bench_name, realtime_bin):
    header = f"[program:{bench_name}-node-socketio]"
    lines = supervisor_conf.splitlines(keepends=True)
    try:
        start = next(i for i, l in enumerate(lines) if l.strip() == header)
    except StopIteration:
        raise Failure(f"rendered supervisor.conf has no {header} block")
    end = start + 1
    while end < len(lines) and lines[end].strip() and not lines[end].lstrip().startswith("["):
        end += 1
    block = lines[start:end]
    if realtime_bin:
        cmd = [i for i, l in enumerate(block) if l.startswith("command=")]
        if len(cmd) != 1:
            raise Failure(f"{header} has {len(cmd)} command= lines")
        block[cmd[0]] = f"command={realtime_bin}\n"
    text = "".join(block)
    return text if text.endswith("\n") else text + "\n"


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench-dir", required=True)
    p.add_argument("--bench-name", required=True)
    p.add_argument("--site", required=True, action="append", help="repeatable")
    p.add_argument("--socketio-port", required=True, type=int)
    p.add_argument("--webserver-port", required=True, type=int)
    p.add_argument("--out", required=True)
    p.add_argument("--user")
    p.add_argument("--realtime-bin")
    p.add_argument("--nginx-port", type=int, help="nginx_port of the given sites (bench: 80)")
    p.add_argument("--bench-cmd", help="path of the bench CLI (default: `which bench`)")
    p.add_argument("--cache-dir", default=os.environ.get("RENDER_BENCH_CACHE")
                   or os.path.join(REPO, ".cache", "frappe-bench"))
    args = p.parse_args(argv)

    try:
        if not os.path.isdir(args.bench_dir):
            raise Failure(f"--bench-dir {args.bench_dir}: not a directory")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", args.bench_name):
            raise Failure(f"--bench-name {args.bench_name!r}: use letters, digits, . _ -")
        jinja2 = import_jinja2()
        tdir = templates_dir(os.path.abspath(args.cache_dir))
        # bench.config.env(): Environment(loader=PackageLoader("bench.config")), default options
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(tdir))
        ctx = build_context(args, tdir)
        try:
            supervisor = env.get_template("supervisor.conf").render(**ctx["supervisor"])
            nginx = env.get_template("nginx.conf").render(**ctx["nginx"])
            unit = env.get_template("systemd/frappe-bench-node-socketio.service").render(**ctx["systemd"])
        except jinja2.TemplateError as e:
            raise Failure(f"rendering bench's templates failed: {e}")
        block = socketio_block(supervisor, args.bench_name, args.realtime_bin)
        os.makedirs(args.out, exist_ok=True)
        write(os.path.join(args.out, "supervisor.conf"), supervisor)
        write(os.path.join(args.out, "nginx.conf"), nginx)
        write(os.path.join(args.out, f"{args.bench_name}-node-socketio.service"), unit)
        write(os.path.join(args.out, "socketio-block.conf"), block)
        write(os.path.join(args.out, "render-context.json"),
              json.dumps({"frappe_bench": BENCH_VERSION, "templates": tdir, **ctx}, indent=2, default=str) + "\n")
    except Failure as e:
        log(f"error: {e}")
        return 1
    except OSError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
