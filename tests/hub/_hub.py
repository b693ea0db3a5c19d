"""A real JupyterHub for isolated-mode tests: OS accounts, a proxy, managed services, kernels.

The hub runs as root with the test's interpreter and spawns each analyst's server with
``LocalProcessSpawner`` as that analyst's own OS account. Managed services run as the steward's
account. Everything a run creates lives under one temporary directory, and :meth:`Hub.stop` /
:func:`delete_user` take it down again: the hub with SIGTERM (then its leftover descendants and
every process of the test's accounts, by pid), the accounts with ``userdel --remove``.

:class:`Kernel` runs code in a kernel of a user's server through the proxy: the server's REST API
starts the kernel, and Jupyter messages (v5, JSON) go over the kernel's websocket.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REQUIRE_ENV = "DPMAGIC_REQUIRE_HUB"
ACCOUNT_MARK = "jupyter-dpmagic hub test"


# ---------------------------------------------------------------------------------- what is needed


def unavailable() -> str | None:
    """Why a hub cannot be run here, or None if it can."""
    import _postgres

    if os.geteuid() != 0:
        return "the hub tests create OS accounts and switch to them: they run as root only"
    for tool in ("useradd", "userdel", "node", "npm"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH"
    if not os.path.exists("/usr/bin/python3"):
        return "no /usr/bin/python3 to build the users' virtualenv with"
    check = subprocess.run(["/usr/bin/python3", "-c", "import venv, ensurepip"], capture_output=True)
    if check.returncode:
        return "/usr/bin/python3 cannot make virtualenvs (install python3-venv)"
    try:
        import tornado  # noqa: F401
    except ImportError:
        return "the test interpreter lacks tornado (it comes with jupyter_server and ipykernel)"
    return _postgres.unavailable()


# -------------------------------------------------------------------------------------- processes


def _proc_ids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def process_uid(pid: int) -> int | None:
    found = _status(pid).get("Uid")
    return int(found.split()[0]) if found else None


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _proc_ids():
        parent = _status(pid).get("PPid")
        if parent:
            children.setdefault(int(parent), []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def processes_of(uids) -> list[int]:
    uids = set(uids)
    return [pid for pid in _proc_ids() if process_uid(pid) in uids]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = _status(pid).get("State", "")
    return not state.startswith("Z")


def end_processes(pids, *, grace: float = 10.0) -> None:
    """SIGTERM each pid, then SIGKILL those still running after ``grace`` seconds."""
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------- accounts


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path


def create_user(name: str, homes: Path) -> Account:
    """A new OS account with a private home directory under ``homes``."""
    home = homes / name
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
                    "--user-group", "--comment", f"{ACCOUNT_MARK} pid={os.getpid()}", name],
                   check=True, capture_output=True, timeout=60)
    os.chmod(home, 0o700)
    entry = pwd.getpwnam(name)
    return Account(name, entry.pw_uid, entry.pw_gid, home)


def delete_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    end_processes(processes_of([uid]), grace=5)
    subprocess.run(["userdel", "--remove", "--force", name], capture_output=True, timeout=60)


def remove_stale_users() -> None:
    """Accounts a crashed earlier run of these tests left behind (their creator is gone)."""
    for entry in pwd.getpwall():
        if not entry.pw_gecos.startswith(ACCOUNT_MARK):
            continue
        try:
            creator = int(entry.pw_gecos.rsplit("pid=", 1)[1])
        except (IndexError, ValueError):
            continue
        if creator != os.getpid() and not _alive(creator):
            delete_user(entry.pw_name)


def run_as(account: Account, command: list[str], *, env: dict | None = None, timeout: float = 120,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run ``command`` as ``account`` (no supplementary groups), in its home directory."""
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(account.home), "USER": account.name,
                   "LANG": "C.UTF-8", **(env or {})}
    result = subprocess.run(command, user=account.uid, group=account.gid, extra_groups=[], env=environment,
                            cwd=account.home, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(command)} as {account.name} failed ({result.returncode}):\n"
                           f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def hub_python(venv: Path) -> str:
    """The test's own interpreter when it has jupyterhub, else the users' virtualenv's (which has it)."""
    try:
        import jupyterhub  # noqa: F401
    except ImportError:
        return str(venv / "bin" / "python")
    return sys.executable


def share_package(destination: Path) -> Path:
    """A world-readable copy of the checkout's jupyter_dpmagic package; the directory to put on PYTHONPATH."""
    source = Path(__file__).resolve().parents[2] / "jupyter_dpmagic"
    target = destination / "jupyter_dpmagic"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules"))
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(destination)], check=True)
    return destination


# ------------------------------------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")


@dataclass
class Transcript:
    """Every HTTP response body and kernel message the test received, to search for what must not leak."""

    parts: list = field(default_factory=list)

    def add(self, where: str, data) -> None:
        self.parts.append((where, data if isinstance(data, str) else data.decode("utf-8", "replace")))

    def containing(self, needle: str) -> list[str]:
        return [where for where, text in self.parts if needle in text]


def http(method: str, url: str, *, body=None, token: str | None = None, transcript: Transcript | None = None,
         timeout: float = 30) -> Response:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"token {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            response = Response(answer.status, answer.read())
    except urllib.error.HTTPError as error:
        response = Response(error.code, error.read())
    if transcript is not None:
        transcript.add(f"{method} {url} -> {response.status}", response.body)
    return response


def wait_for(check, *, timeout: float, what: str, interval: float = 0.2, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            found = check()
        except (OSError, urllib.error.URLError) as error:
            found, last = None, error
        if found:
            return found
        time.sleep(interval)
    tail = ""
    if log is not None and log.exists():
        tail = "\n--- end of the hub's log ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    raise TimeoutError(f"{what} within {timeout:g} s (last error: {last!r}){tail}")


# -------------------------------------------------------------------------------------------- hub

PROBE = '''\
"""A stand-in service: says which account it runs as, under the hub's service prefix."""
import http.server, json, os, pwd, urllib.parse

url = urllib.parse.urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if not self.path.startswith(prefix):
            self.send_error(404)
            return
        body = json.dumps({"uid": os.getuid(), "user": pwd.getpwuid(os.getuid()).pw_name, "pid": os.getpid(),
                           "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer((url.hostname, url.port), Handler).serve_forever()
'''


@dataclass
class Service:
    """A managed service: its name, the command the hub runs, the account it runs as."""

    name: str
    command: list
    account: Account
    environment: dict = field(default_factory=dict)
    port: int = field(default_factory=free_port)

    def spec(self) -> dict:
        return {"name": self.name, "command": self.command, "user": self.account.name,
                "url": f"http://127.0.0.1:{self.port}", "cwd": str(self.account.home),
                "environment": self.environment}


class Hub:
    """A JupyterHub (``python -m jupyterhub``) with its proxy, configured for the given accounts.

    Parameters
    ----------
    root : Path
        A private directory (root's) for the hub's configuration, database and log.
    venv : Path
        The world-readable virtualenv the users' servers and the services run with.
    pythonpath : Path
        Where the shared copy of the package is.
    proxy : str
        The configurable-http-proxy executable.
    python : str
        The interpreter the hub runs with (as root); it must have jupyterhub.
    users : list of Account
        The hub's users (all of them OS accounts).
    granted : list of str
        Users given the role that lets them use ``steward_service``.
    services : list of Service
        Managed services.
    steward_service : str
        The name of the service the analysts' kernels talk to (``DPMAGIC_STEWARD_URL``).
    """

    def __init__(self, root: Path, *, venv: Path, pythonpath: Path, proxy: str, python: str, users: list[Account],
                 granted: list[str], services: list[Service], steward_service: str = "dpmagic"):
        self.root, self.venv, self.pythonpath, self.proxy, self.python = root, venv, pythonpath, proxy, python
        self.users, self.granted, self.services = users, granted, services
        self.steward_service = steward_service
        self.port, self.hub_port, self.api_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(32)
        self.log = root / "hub.log"
        self.process: subprocess.Popen | None = None
        self._children: set[int] = set()
        self.transcript = Transcript()
        self.timings: dict[str, float] = {}

    @property
    def steward_url(self) -> str:
        return f"{self.url}/services/{self.steward_service}/"

    def config(self) -> str:
        service_scopes = [f"access:services!service={s.name}" for s in self.services]
        values = {
            "JupyterHub.bind_url": self.url,
            "JupyterHub.hub_bind_url": f"http://127.0.0.1:{self.hub_port}",
            "ConfigurableHTTPProxy.api_url": f"http://127.0.0.1:{self.api_port}",
            "ConfigurableHTTPProxy.command": [self.proxy],
            "JupyterHub.db_url": f"sqlite:///{self.root / 'jupyterhub.sqlite'}",
            "JupyterHub.cookie_secret_file": str(self.root / "cookie_secret"),
            "JupyterHub.spawner_class": "localprocess",
            "JupyterHub.log_level": "INFO",
            "Authenticator.allowed_users": {u.name for u in self.users},
            "Spawner.cmd": [str(self.venv / "bin" / "jupyterhub-singleuser")],
            "Spawner.environment": {"PYTHONPATH": str(self.pythonpath), "DPMAGIC_STEWARD_URL": self.steward_url},
            "Spawner.server_token_scopes": ["users:activity!user", "access:servers!server", *service_scopes],
            "Spawner.start_timeout": 120,
            "Spawner.http_timeout": 90,
            "JupyterHub.services": [{"name": "test-admin", "api_token": self.admin_token},
                                    *(s.spec() for s in self.services)],
            "JupyterHub.load_roles": [
                {"name": "admin", "services": ["test-admin"]},
                {"name": "dpmagic-analyst", "description": "may use the steward", "scopes": service_scopes,
                 "users": list(self.granted)},
            ],
        }
        lines = ["c = get_config()  # noqa"]
        lines += [f"c.{key} = {value!r}" for key, value in values.items()]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------------------- lifecycle
    def start(self, *, timeout: float = 90) -> None:
        started = time.monotonic()
        config = self.root / "jupyterhub_config.py"
        config.write_text(self.config())
        environment = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32)}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([self.python, "-m", "jupyterhub", "-f", str(config)], cwd=self.root,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=environment, start_new_session=True)

        def up():
            if self.process.poll() is not None:
                raise RuntimeError(f"the hub exited ({self.process.returncode}):\n{self.log.read_text()[-6000:]}")
            return http("GET", f"{self.url}/hub/api/", timeout=5).status == 200

        wait_for(up, timeout=timeout, what="the hub did not answer through its proxy", log=self.log)
        self.timings["hub up"] = time.monotonic() - started
        self._remember_children()

    def wait_for_service(self, name: str, path: str = "", *, token: str | None = None, timeout: float = 60) -> None:
        started = time.monotonic()

        def answers():
            # 404 and 503 come from the proxy or the hub while the service's route is missing.
            status = http("GET", f"{self.url}/services/{name}/{path}", token=token, timeout=5).status
            return status not in (404, 502, 503)

        wait_for(answers, timeout=timeout, what=f"the service {name} did not answer", log=self.log)
        self.timings[f"service {name}"] = time.monotonic() - started

    def _remember_children(self) -> None:
        if self.process is not None:
            self._children.update(descendants(self.process.pid))

    def stop(self) -> None:
        if self.process is None:
            return
        self._remember_children()
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.timings["hub stop"] = time.monotonic() - started
        end_processes([p for p in self._children if _alive(p)], grace=5)
        end_processes(processes_of(u.uid for u in self.users), grace=5)
        self.process = None

    # --------------------------------------------------------------------------------- the API
    def api(self, method: str, path: str, body=None, *, token: str | None = None, expect=(200, 201, 202, 204)):
        response = http(method, f"{self.url}/hub/api/{path}", body=body, token=token or self.admin_token,
                        transcript=self.transcript)
        if response.status not in expect:
            raise RuntimeError(f"{method} /hub/api/{path}: HTTP {response.status} {response.body[:2000]!r}")
        return response.json() if response.body else None

    def token(self, user: str, *, scopes: list[str] | None = None, note: str = "test") -> str:
        """A new API token of ``user`` (by default with all the user's permissions)."""
        body = {"note": note, "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        return self.api("POST", f"users/{user}/tokens", body)["token"]

    def spawn(self, *names: str, timeout: float = 120) -> None:
        """Start the servers of ``names`` and wait until they are ready."""
        started = time.monotonic()
        for name in names:
            self.api("POST", f"users/{name}/server", expect=(201, 202, 400))

        def ready():
            for name in names:
                server = self.api("GET", f"users/{name}").get("servers", {}).get("")
                if not server or not server.get("ready"):
                    return False
            return True

        wait_for(ready, timeout=timeout, what=f"the servers of {', '.join(names)} were not ready", interval=0.5,
                 log=self.log)
        self.timings["spawn " + ", ".join(names)] = time.monotonic() - started
        self._remember_children()

    def kernel(self, user: str, token: str) -> "Kernel":
        return Kernel(self, user, token)


# ----------------------------------------------------------------------------------------- kernel


class Output(NamedTuple):
    stdout: str
    result: str | None
    error: str | None


class Kernel:
    """A kernel in ``user``'s server, driven through the hub's proxy with ``token`` (one of that user's)."""

    def __init__(self, hub: Hub, user: str, token: str, *, timeout: float = 60):
        self.hub, self.user, self._token = hub, user, token
        self.base = f"{hub.url}/user/{user}/api/kernels"
        self.session = uuid.uuid4().hex
        self.messages: list[dict] = []
        self.stderr = ""
        self._loop = asyncio.new_event_loop()
        response = http("POST", self.base, body={"name": "python3"}, token=token, transcript=hub.transcript,
                        timeout=timeout)
        if response.status != 201:
            raise RuntimeError(f"starting a kernel for {user}: HTTP {response.status} {response.body[:2000]!r}")
        self.id = response.json()["id"]
        self._socket = self._loop.run_until_complete(asyncio.wait_for(self._connect(), timeout))

    async def _connect(self):
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        url = self.base.replace("http://", "ws://", 1) + f"/{self.id}/channels?session_id={self.session}"
        return await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {self._token}"}),
                                       max_message_size=64 * 1024 * 1024)

    def run(self, code: str, *, timeout: float = 120) -> Output:
        """Execute ``code``; its stdout, the text of its result (or displays), and ``"Name: message"`` on error."""
        return self._loop.run_until_complete(asyncio.wait_for(self._execute(code), timeout))

    async def _execute(self, code: str) -> Output:
        msg_id = uuid.uuid4().hex
        message = {
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": self.user,
                       "session": self.session, "version": "5.3",
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }
        await self._socket.write_message(json.dumps(message))
        stdout, results, error = [], [], None
        idle = replied = False
        while not (idle and replied):
            raw = await self._socket.read_message()
            if raw is None:
                raise ConnectionError(f"the websocket of {self.user}'s kernel closed")
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", "replace")
            self.hub.transcript.add(f"kernel {self.user}", raw)
            reply = json.loads(raw)
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            self.messages.append(reply)
            kind, content = reply["header"]["msg_type"], reply["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    stdout.append(content["text"])
                else:
                    self.stderr += content["text"]
            elif kind in ("execute_result", "display_data"):
                results.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
                if content.get("status") == "error" and error is None:
                    error = f"{content.get('ename')}: {content.get('evalue')}"
        return Output("".join(stdout), "\n".join(results) if results else None, error)

    def value(self, expression: str):
        """The JSON-able value of ``expression`` in the kernel (printed as JSON and read back)."""
        out = self.run(f"import json as _json\nprint(_json.dumps({expression}))")
        if out.error:
            raise RuntimeError(f"{expression} failed in {self.user}'s kernel: {out.error}\n{self.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        try:
            self._socket.close()
            http("DELETE", f"{self.base}/{self.id}", token=self._token, timeout=20)
        except Exception:
            pass
        finally:
            self._loop.close()


# ------------------------------------------------------------------------------------- PostgreSQL


def private_database(cluster, owner: Account, database: str, *, timeout: float = 10) -> str:
    """A database of ``cluster`` that only the OS account ``owner`` can open; its URL.

    The role has the account's name and authenticates by ``peer`` on the unix socket; every other
    account is refused (root keeps the ``postgres`` superuser through an ident map).
    """
    import psycopg

    with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{owner.name}" LOGIN')
        admin.execute(f'CREATE DATABASE "{database}" OWNER "{owner.name}"')
        admin.execute(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
        (cluster.data / "pg_hba.conf").write_text(
            "local all postgres peer map=admins\n"
            f"local {database} {owner.name} peer\n")
        (cluster.data / "pg_ident.conf").write_text("admins root postgres\nadmins postgres postgres\n")
        admin.execute("SELECT pg_reload_conf()")
    # The socket's directory is reachable by every account; pg_hba.conf decides who gets in.
    os.chmod(cluster.root, 0o711)
    url = f"postgresql://{owner.name}@/{database}?host={cluster.socket}"

    def refused_to_root():
        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.OperationalError:
            return True
        return False

    wait_for(refused_to_root, timeout=timeout, what="the server did not reload pg_hba.conf")
    return url
