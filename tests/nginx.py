"""Debian's nginx with the shipped deploy/nginx/surge.conf, in front of Surge processes
of a test (the rolling-restart test, the three-node run)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.backends import unavailable, wait_listening

CONF = Path(__file__).parents[1] / "deploy" / "nginx" / "surge.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        message = "nginx is not installed (scripts/install-system-deps.sh installs it)"
        unavailable(message)
    return found


def render(listen: int, upstreams: Sequence[str]) -> str:
    """The shipped file, with these upstreams (HOST:PORT) in place of the example ones."""
    text = CONF.read_text()
    servers = "".join(f"    server {address} max_fails=0;\n" for address in upstreams)
    text, count = re.subn(r"(?m)^    server 127\.0\.0\.1:\d+ max_fails=0;\n", "", text)
    assert count == 2, "the example upstream block changed: update tests/nginx.py"
    text = text.replace("    least_conn;\n", "    least_conn;\n" + servers)
    return text.replace("listen 80;", f"listen 127.0.0.1:{listen};")


@contextmanager
def running_nginx(directory: Path, listen: int, upstreams: Sequence[str]) -> Iterator[str]:
    binary = nginx_binary()
    (directory / "surge.conf").write_text(render(listen, upstreams))
    (directory / "nginx.conf").write_text(
        "daemon off;\nworker_processes 1;\npid nginx.pid;\nerror_log error.log warn;\n"
        "user root;\nevents { worker_connections 4096; }\n"
        "http {\n  access_log off;\n  client_body_temp_path tmp-body;\n"
        "  proxy_temp_path tmp-proxy;\n  fastcgi_temp_path tmp-fcgi;\n"
        "  uwsgi_temp_path tmp-uwsgi;\n  scgi_temp_path tmp-scgi;\n"
        "  include surge.conf;\n}\n"
    )
    argv = [binary, "-p", str(directory), "-c", str(directory / "nginx.conf")]
    checked = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(listen, 10, "nginx")
        yield f"http://127.0.0.1:{listen}"
    finally:
        process.terminate()
        process.wait(timeout=10)
