"""Serve the web demo (examples/web, installed as the package toolkit.web_page) and a model.app.onnx on 127.0.0.1.

A stdlib HTTP server with the headers multi-threaded WebAssembly needs: Cross-Origin-Opener-Policy and
Cross-Origin-Embedder-Policy make the page cross-origin isolated, which is what lets ONNX Runtime Web use
SharedArrayBuffer threads. It serves only what the page needs, from a fixed table of mounts: the page's own
files, ONNX Runtime Web's dist folder (from npm, under /ort/) and the one model, at the URL the page fetches
(/model/model.app.onnx) whatever the file's name, from the bytes checked at startup (held in memory: a file
replaced later is not served). Every request path is confined to its mount's folder and to the file types that
mount allows.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import posixpath
import socket
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from toolkit import fileio
from toolkit.errors import ArtifactError, ConfigError

HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The page has one source, examples/web; pyproject.toml installs that folder as toolkit/web_page, so an
# installed toolkit (any extras or none) finds it beside this module and a source checkout finds it in place.
_INSTALLED_SITE = Path(__file__).resolve().parent / "web_page"
DEFAULT_SITE = _INSTALLED_SITE if (_INSTALLED_SITE / "index.html").is_file() else (
    Path(__file__).resolve().parents[1] / "examples" / "web")
DEFAULT_MODEL = Path("exported") / "model.app.onnx"
ORT_DIST = Path("node_modules") / "onnxruntime-web" / "dist"
MODEL_URL = "/model/model.app.onnx"  # where the page (app.mjs) fetches the model

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".bin": "application/octet-stream",
}
SITE_TYPES = frozenset({".html", ".mjs", ".css", ".png", ".svg"})
REQUEST_TIMEOUT_S = 10.0  # a client that sends nothing for this long is dropped
CONNECTION_TIMEOUT_S = 60.0  # no connection is held longer, however slowly it trickles
MAX_WORKERS = 32  # connections served at once; more get 503 at once instead of a thread each
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


@dataclass(frozen=True)
class Mount:
    """URL prefix `prefix` (ending in '/') serves files of `suffixes` from `folder`; or, with `held`, the one name
    `file` under it, whose bytes are `held` (the folder unused)."""

    prefix: str
    folder: Path | None
    suffixes: frozenset[str] = SITE_TYPES
    file: str | None = None
    held: bytes | None = None


@dataclass(frozen=True)
class WebConfig:
    site: Path = DEFAULT_SITE
    model: Path = DEFAULT_MODEL
    ort: Path | None = None  # onnxruntime-web's dist folder; None: the site's node_modules, else the working folder's
    host: str = HOST
    port: int = DEFAULT_PORT
    extra_mounts: tuple[Mount, ...] = field(default_factory=tuple)  # e.g. test data for the browser test


def mounts(config: WebConfig) -> tuple[Mount, ...]:
    """The serving table, checked: ConfigError/ArtifactError say what is missing and how to get it."""
    site = Path(config.site).resolve()
    if not (site / "index.html").is_file():
        raise ConfigError(f"{config.site} has no index.html; pass --site pointing at the repository's examples/web")
    model = Path(config.model)
    if not model.is_file():
        raise ArtifactError(f"{model} {fileio.absent(model, 'run `toolkit export --format onnx-app` first')}")
    checked = check_app_model(model)
    ort = find_ort(site, config.ort)
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, not {config.port}")
    prefix, _, name = MODEL_URL.rpartition("/")
    return (
        Mount("/ort/", ort, frozenset({".mjs", ".wasm"})),
        Mount(prefix + "/", None, file=name, held=checked),
        *config.extra_mounts,
        Mount("/", site),
    )


def check_app_model(model: Path) -> bytes:
    """The bytes of `model`, checked to be what the page runs: a toolkit .onnx that takes raw pixels (an onnx-app
    export), unchanged since export where a manifest is beside it, with its weights inside it (the page is served
    this one file), and one ONNX Runtime loads; ArtifactError where they are not."""
    from toolkit.formats import kind_of
    from toolkit.model_files import read_model_file
    from toolkit.onnx_wire import has_external_data
    from toolkit.runners import RunnerOptions
    from toolkit.runners.onnxruntime import OnnxRuntimeRunner

    if model.suffix != ".onnx":
        raise ArtifactError(f"{model} is not an .onnx file; the page runs the onnx-app export (model.app.onnx)")
    data = read_model_file(model)
    if has_external_data(data):  # the page is served this one file, so the weights must be inside it
        raise ArtifactError(f"{model} keeps its weights in another file, which the page cannot load; serve an "
                            "onnx-app export, which holds them")
    runner = OnnxRuntimeRunner.toolkit_model(data, str(model), RunnerOptions())
    if runner.kind != kind_of("onnx-app"):
        raise ArtifactError(f"{model} takes {runner.kind} input; the page runs the onnx-app export (model.app.onnx), "
                            "which takes raw pixels")
    return data


def ort_version(site: Path) -> str:
    """The onnxruntime-web version the page is tested with (its package.json), for the install hint."""
    try:
        return json.loads((site / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    except (OSError, ValueError, KeyError, TypeError):
        return "latest"


def find_ort(site: Path, given: Path | None) -> Path:
    """onnxruntime-web's dist folder: `given` (the folder itself or one holding node_modules), else the site's
    node_modules (a source checkout after `npm ci`), else the working folder's; ConfigError says how to get it."""
    candidates = [given, given / ORT_DIST] if given is not None else [site / ORT_DIST, Path.cwd() / ORT_DIST]
    for folder in candidates:
        if folder is not None and (folder / "ort.wasm.min.mjs").is_file():
            return folder.resolve()
    where = f"in {given}" if given is not None else f"in {site} or {Path.cwd()}"
    raise ConfigError(f"ONNX Runtime Web (the page's runtime, from npm) is not {where}; run "
                      f"`npm install onnxruntime-web@{ort_version(site)}` here, or pass --ort FOLDER")


def content(table: tuple[Mount, ...], url_path: str) -> tuple[bytes, str] | None:
    """The bytes that `url_path` names in `table` and their file type (suffix), or None: nothing outside a mount's
    folder, no hidden or node_modules path from the site, no file type the mount does not serve."""
    path = _request_path(url_path)
    mount = None if path is None else next((m for m in table if path.startswith(m.prefix)), None)
    if mount is None:
        return None
    rest = path[len(mount.prefix):]
    if mount.held is not None:
        return (mount.held, Path(rest).suffix) if rest == mount.file else None
    target = _file_in(mount, rest)
    if target is None:
        return None
    try:
        return target.read_bytes(), target.suffix
    except OSError:  # removed or unreadable since it was resolved: a 404, never a traceback on the console
        return None


def _request_path(url_path: str) -> str | None:
    """The URL's path, decoded and normalized (a folder means its index.html), or None when it has a NUL, a
    backslash, a '.' or '..' part or a hidden name, or is not absolute."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path)
    if "\0" in path or "\\" in path or not path.startswith("/"):
        return None
    if path.endswith("/"):
        path += "index.html"
    parts = path.split("/")
    if any(part in ("..", ".") or part.startswith(".") for part in parts[1:]):
        return None
    return posixpath.normpath(path)


def loopback_host(host_header: str | None) -> bool:
    """Whether a request's Host names this machine's loopback (a name or an address, with any port); a page
    from elsewhere that rebinds its DNS name to 127.0.0.1 still sends its own name and is refused. A request
    without Host (HTTP/1.0) comes from no browser page and is served."""
    if host_header is None:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host, closed, port = host[1:].partition("]")
        if not closed or (port and not (port.startswith(":") and port[1:].isascii() and port[1:].isdigit())):
            return False
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _file_in(mount: Mount, rest: str) -> Path | None:
    """The file `rest` names under `mount`, if the mount serves it and it exists."""
    if mount.prefix == "/" and rest.split("/", 1)[0] == "node_modules":
        return None
    folder = mount.folder.resolve()
    target = (folder / rest).resolve()
    if not target.is_relative_to(folder) or not target.is_file() or target.suffix not in mount.suffixes:
        return None
    return target


class _Handler(http.server.BaseHTTPRequestHandler):
    table: tuple[Mount, ...] = ()
    server_version = "toolkit-web"
    timeout = REQUEST_TIMEOUT_S  # StreamRequestHandler puts it on the socket: every read and write is bounded

    def version_string(self) -> str:
        return self.server_version  # alone: http.server would add Python's version (sys_version) after a space

    def setup(self) -> None:
        super().setup()
        # the whole connection is bounded too: past the limit the socket is shut, which ends any read or write
        self._deadline = threading.Timer(CONNECTION_TIMEOUT_S, self._shut)
        self._deadline.daemon = True
        self._deadline.start()

    def _shut(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        self._deadline.cancel()
        try:
            super().finish()
        except OSError:  # the client went away: nothing to flush to
            pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._send(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(body=False)

    def _send(self, body: bool) -> None:
        if not loopback_host(self.headers.get("Host")):
            self.send_error(421, "Misdirected Request: this server answers only to localhost")
            return
        found = content(self.table, self.path)
        if found is None:
            self.send_error(404, "Not Found")
            return
        data, suffix = found
        self.send_response(200)
        self.send_header("Content-Type", MIME_TYPES.get(suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(data)))
        # cross-origin isolation: needed for SharedArrayBuffer, hence for multi-threaded wasm
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # the CLI prints the URL; requests stay quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    """At most MAX_WORKERS connections at once (more are answered 503 and closed); a client that goes away
    or times out ends its connection quietly, and any other failure is one line on stderr, not a traceback."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.workers = threading.BoundedSemaphore(MAX_WORKERS)

    def process_request(self, request, client_address) -> None:
        if not self.workers.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.workers.release()

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (OSError, TimeoutError)):  # reset, broken pipe, timed out: the client's doing
            return
        print(f"toolkit web: request from {client_address[0]} failed: {type(error).__name__}: {error}"[:300],
              file=sys.stderr)


def make_server(config: WebConfig) -> http.server.ThreadingHTTPServer:
    """A server bound to config.host:config.port (0 picks a free port), not yet serving."""
    table = mounts(config)
    handler = type("Handler", (_Handler,), {"table": table})
    try:
        server = _Server((config.host, config.port), handler)
    except OSError as e:
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {e.strerror or e}") from None
    return server


def url(server: http.server.HTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"
