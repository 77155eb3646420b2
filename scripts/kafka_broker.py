#!/usr/bin/env python3
"""A real single-node Apache Kafka broker (KRaft) for tests and development, without Docker.

Kafka is a Java program: ``scripts/kafka/pom.xml`` pulls the broker and its runtime jars from
Maven Central into ``scripts/kafka/lib`` and ``java -cp 'lib/*' kafka.Kafka`` runs it. This
module is stdlib-only so it can be run by any Python 3.11+ and imported by file path from the
test fixtures.

Command line::

    python scripts/kafka_broker.py fetch                         # jars into scripts/kafka/lib
    python scripts/kafka_broker.py start --dir DIR [--port P]    # prints host:port
    python scripts/kafka_broker.py start --dir DIR --security sasl_ssl  # SASL_SSL/SCRAM port
    python scripts/kafka_broker.py status --dir DIR
    python scripts/kafka_broker.py stop --dir DIR

Python::

    with running_broker() as bootstrap:          # throw-away broker in a temporary dir
        ...
    broker = Broker(workdir)                     # stop/kill/start keep the port and data
    broker.start(); broker.kill(); broker.start(); broker.stop()

``DIR`` holds ``server.properties``, ``broker.json`` (ports), ``data/`` (the KRaft log dirs),
``kafka.out`` (broker stdout/stderr, appended across restarts), ``bootstrap`` and ``pid``.

``security="sasl_ssl"`` makes the client port a SASL_SSL listener that only accepts the SCRAM-SHA-512
user ``driftwarden`` (what managed Kafka services offer). A throw-away CA and a broker certificate
for 127.0.0.1/localhost are made with ``keytool`` at the first start (``DIR/tls/``; the CA is
``DIR/tls/ca.pem`` for ``ssl_cafile``); the user's random password sits in ``broker.json``, and
``Broker.client_security()`` gives the kafka-python settings. Inter-broker traffic and the
readiness probe use an extra PLAINTEXT listener on loopback (``Broker.internal_port``), so this is
a test double of a secured cluster, not a hardened broker.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "KAFKA_DIR",
    "READY_MESSAGE",
    "SASL_MECHANISM",
    "SASL_USER",
    "SECURITY_MODES",
    "Broker",
    "BrokerError",
    "ensure_jars",
    "free_port",
    "jars_present",
    "make_tls_material",
    "main",
    "new_cluster_id",
    "parse_api_versions",
    "parse_metadata_brokers",
    "probe_metadata",
    "render_properties",
    "running_broker",
    "secure_properties",
    "start",
    "stop",
]

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
HOST = "127.0.0.1"
# Logged by KafkaRaftServer once broker and controller are both up (Kafka 3.x and 4.x).
READY_MESSAGE = "Kafka Server started"
# Written into lib/ after a complete Maven copy; holds the pom's hash so a version bump refetches.
_FETCH_MARKER = ".fetched"
_LOG_TAIL_CHARS = 4000
#: ``Broker(security=...)``: the client listener's protocol.
SECURITY_MODES = ("plaintext", "sasl_ssl")
#: The SCRAM user a ``sasl_ssl`` broker is formatted with, and its mechanism.
SASL_USER = "driftwarden"
SASL_MECHANISM = "SCRAM-SHA-512"
_CERT_DAYS = 30


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted, started or stopped; the message says why."""


# --------------------------------------------------------------------------- jars


def _pom_digest(kafka_dir: Path) -> str:
    return hashlib.sha256((kafka_dir / "pom.xml").read_bytes()).hexdigest()


def jars_present(kafka_dir: Path = KAFKA_DIR) -> bool:
    """Tell whether ``kafka_dir/lib`` holds a complete copy of the jars for the current pom."""
    lib = kafka_dir / "lib"
    marker = lib / _FETCH_MARKER
    if marker.is_file():
        return marker.read_text().strip() == _pom_digest(kafka_dir)
    # A lib/ filled before the marker existed (or by hand): accept it when the broker and the
    # log4j SLF4J binding are both there, and record that so later checks are one file read.
    if any(lib.glob("kafka_2.13-*.jar")) and any(lib.glob("log4j-slf4j*-impl-*.jar")):
        with contextlib.suppress(OSError):  # a read-only lib/ is still a usable lib/
            marker.write_text(_pom_digest(kafka_dir) + "\n")
        return True
    return False


def ensure_jars(kafka_dir: Path = KAFKA_DIR) -> Path:
    """Fetch the broker's jars with Maven unless they are already there; return the lib dir.

    Idempotent: with a complete ``lib/`` nothing runs (Maven is not even looked up). When the pom
    changed since the last fetch, old jars are removed first so two Kafka versions never share
    one classpath.
    """
    lib = kafka_dir / "lib"
    if lib.is_dir() and jars_present(kafka_dir):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            f"Maven (mvn) is not on PATH, so the Kafka jars for {lib} cannot be fetched."
        )
    lib.mkdir(parents=True, exist_ok=True)
    for stale in lib.glob("*.jar"):
        stale.unlink()
    cmd = [mvn, "-B", "-q", "-f", str(kafka_dir / "pom.xml"), "dependency:copy-dependencies"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not any(lib.glob("kafka_2.13-*.jar")):
        raise BrokerError(
            f"Maven could not fetch the Kafka jars into {lib} (exit {done.returncode}):\n"
            + (done.stdout + done.stderr)[-_LOG_TAIL_CHARS:]
        )
    (lib / _FETCH_MARKER).write_text(_pom_digest(kafka_dir) + "\n")
    return lib


# --------------------------------------------------------------------------- small helpers


def new_cluster_id() -> str:
    """Return a KRaft cluster id in the form of ``org.apache.kafka.common.Uuid.toString()``.

    That is URL-safe base64 of 16 random bytes without padding; like ``Uuid.randomUuid()`` we
    never return an id starting with '-', which the storage tool would parse as an option.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):
            return cid


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option the JVM sets on its listeners, so TIME_WAIT leftovers do not count as busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port(exclude: tuple[int, ...] = ()) -> int:
    """Return a free TCP port on 127.0.0.1 that lies *below* the kernel's ephemeral range.

    A port from the ephemeral range could be handed to some client socket while the broker is
    stopped for a restart test; below the range only explicit binds can take it.
    """
    low, _ = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1025, low - 12000), low)
        if port not in exclude and _port_is_free(port):
            return port
    raise BrokerError(f"No free TCP port found on {HOST} below {low}.")


def _read_from(path: Path, start: int = 0) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _log_tail(path: Path, start: int = 0) -> str:
    text = _read_from(path, start)
    return text[-_LOG_TAIL_CHARS:] if text else f"(nothing in the broker log {path})"


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerError("No java found (set JAVA_HOME or put java 17+ on PATH).")
    return found


def _parent_death_signal() -> Callable[[], None] | None:
    """Return a pre-exec hook that makes Linux SIGTERM the child when the parent thread dies.

    ``prctl`` is looked up here, in the parent, so the forked child only makes the call.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux/glibc: the broker simply outlives a crashed parent

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG

    return hook


# --------------------------------------------------------------------------- protocol probe


def _request(api_key: int, api_version: int, correlation_id: int, body: bytes) -> bytes:
    client_id = b"driftwarden-probe"
    # Request header v1: api_key, api_version, correlation_id, client_id (int16-length string).
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("The broker closed the connection in the middle of a response.")
        chunks += chunk
    return bytes(chunks)


def _response(sock: socket.socket, correlation_id: int) -> bytes:
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    data = _recv_exact(sock, size)
    (got,) = struct.unpack_from(">i", data, 0)
    if got != correlation_id:
        raise ConnectionError(f"The broker answered correlation id {got}, not {correlation_id}.")
    return data[4:]  # response header v0 is only the correlation id


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def _unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def int16(self) -> int:
        return self._unpack(">h")

    def int32(self) -> int:
        return self._unpack(">i")

    def string(self) -> str | None:
        n = self.int16()
        if n < 0:
            return None
        text = self.data[self.pos : self.pos + n].decode("utf-8")
        self.pos += n
        return text


def parse_api_versions(body: bytes) -> dict[int, tuple[int, int]]:
    """Parse an ApiVersions v0 response body into ``{api_key: (min_version, max_version)}``."""
    r = _Reader(body)
    error = r.int16()
    if error != 0:
        raise ConnectionError(f"The broker answered ApiVersions with error code {error}.")
    return {r.int16(): (r.int16(), r.int16()) for _ in range(r.int32())}


def parse_metadata_brokers(body: bytes, version: int) -> list[tuple[int, str, int]]:
    """Parse the broker list ``[(node_id, host, port)]`` from a Metadata v1-v8 response body."""
    r = _Reader(body)
    if version >= 3:
        r.int32()  # throttle_time_ms
    brokers = []
    for _ in range(r.int32()):
        node_id, host, port = r.int32(), r.string(), r.int32()
        r.string()  # rack
        brokers.append((node_id, host or "", port))
    return brokers


def probe_metadata(host: str, port: int, timeout: float = 5.0) -> list[tuple[int, str, int]]:
    """Connect, ask ApiVersions then Metadata (no topics), return the brokers the cluster lists.

    Plain sockets on purpose: the readiness check must not need kafka-python. Only the classic
    (non-flexible) encodings are used: ApiVersions v0 is answered by every broker, and Metadata
    v1-v8 share the fields read here. Raises ``OSError`` while the broker is not serving.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_request(18, 0, 1, b""))
        versions = parse_api_versions(_response(sock, 1))
        low, high = versions.get(3, (0, -1))
        version = min(high, 8)
        if version < max(low, 1):
            raise ConnectionError(f"The broker at {host}:{port} offers no Metadata v1-v8.")
        body = struct.pack(">i", -1)  # null topic list: brokers only, all topics
        if version >= 4:
            body += b"\x00"  # allow_auto_topic_creation = false
        if version >= 8:
            body += b"\x00\x00"  # include cluster/topic authorized operations = false
        sock.sendall(_request(3, version, 2, body))
        return parse_metadata_brokers(_response(sock, 2), version)


# --------------------------------------------------------------------------- the broker


def render_properties(template: str, *, port: int, controller_port: int, log_dir: Path) -> str:
    """Fill ``server.properties.template`` (``{port}``, ``{controller_port}``, ``{log_dir}``)."""
    return (
        template.replace("{port}", str(port))
        .replace("{controller_port}", str(controller_port))
        .replace("{log_dir}", str(log_dir))
    )


def secure_properties(
    rendered: str, *, port: int, internal_port: int, controller_port: int, tls: Path, password: str
) -> str:
    """Turn rendered PLAINTEXT properties into a broker whose client port requires SASL_SSL.

    The client port becomes the ``SASL_SSL`` listener (SCRAM-SHA-512 only, TLS from the PKCS12
    keystore ``tls/broker.p12`` locked with ``password``); ``INTERNAL`` is a PLAINTEXT listener on
    ``internal_port`` for inter-broker traffic and the readiness probe. Keys already in
    ``rendered`` are replaced in place, the others are appended.
    """
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    overrides = {
        "listeners": (
            f"SASL_SSL://{HOST}:{port},INTERNAL://{HOST}:{internal_port},"
            f"CONTROLLER://{HOST}:{controller_port}"
        ),
        "advertised.listeners": f"SASL_SSL://{HOST}:{port},INTERNAL://{HOST}:{internal_port}",
        "inter.broker.listener.name": "INTERNAL",
        "listener.security.protocol.map": (
            "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL"
        ),
        "sasl.enabled.mechanisms": SASL_MECHANISM,
        f"listener.name.sasl_ssl.{SASL_MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(tls / "broker.p12"),
        "ssl.keystore.password": password,
        "ssl.key.password": password,
        "ssl.client.auth": "none",
        "ssl.endpoint.identification.algorithm": "https",
    }
    lines = rendered.splitlines()
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0]
        if not line.startswith("#") and "=" in line and key in overrides:
            lines[i] = f"{key}={overrides.pop(key)}"
    lines += ["", "# SASL_SSL client listener (scripts/kafka_broker.py, security=sasl_ssl)"]
    lines += [f"{key}={value}" for key, value in overrides.items()]
    return "\n".join(lines) + "\n"


def _keytool(*args: str) -> bytes:
    keytool = shutil.which("keytool", path=str(Path(_java()).parent)) or shutil.which("keytool")
    if keytool is None:
        raise BrokerError("No keytool found next to java or on PATH (it comes with the JDK/JRE).")
    done = subprocess.run([keytool, *args], capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode("utf-8", errors="replace")
        raise BrokerError(f"keytool {args[0]} failed (exit {done.returncode}):\n{out}")
    return done.stdout


def make_tls_material(tls: Path, password: str, days: int = _CERT_DAYS) -> None:
    """Make a throw-away CA and a CA-signed broker key pair for 127.0.0.1/localhost in ``tls``.

    Writes ``ca.pem`` (the trust anchor for clients), ``broker.pem`` and ``broker.p12`` (the
    broker's PKCS12 keystore: key plus chain, locked with ``password``). ``ca.p12`` holds the
    CA's key. Seven ``keytool`` runs (a few seconds), only at a broker's first start.
    """
    tls.mkdir(parents=True, exist_ok=True)
    ca, store = tls / "ca.p12", tls / "broker.p12"
    for stale in (ca, store):
        stale.unlink(missing_ok=True)
    common = ["-storetype", "PKCS12", "-storepass", password, "-keypass", password]
    gen = ["-genkeypair", "-keyalg", "RSA", "-keysize", "2048", "-validity", str(days)]
    _keytool(*gen, "-alias", "ca", "-dname", "CN=driftwarden test CA", "-ext", "bc:c",
             "-keystore", str(ca), *common)  # fmt: skip
    _keytool(*gen, "-alias", "broker", "-dname", "CN=localhost", "-keystore", str(store), *common)
    (tls / "ca.pem").write_bytes(
        _keytool("-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca), *common)
    )
    request = tls / "broker.csr"
    request.write_bytes(_keytool("-certreq", "-alias", "broker", "-keystore", str(store), *common))
    signed = _keytool(
        "-gencert", "-rfc", "-alias", "ca", "-keystore", str(ca), *common,
        "-infile", str(request), "-validity", str(days),
        "-ext", "SAN=ip:127.0.0.1,dns:localhost", "-ext", "KU=digitalSignature,keyEncipherment",
        "-ext", "EKU=serverAuth",
    )  # fmt: skip
    request.unlink()
    (tls / "broker.pem").write_bytes(signed)
    # The keystore entry must hold the whole chain: CA first (trusted), then the signed reply.
    _keytool("-importcert", "-noprompt", "-alias", "ca", "-file", str(tls / "ca.pem"),
             "-keystore", str(store), *common)  # fmt: skip
    _keytool("-importcert", "-noprompt", "-alias", "broker", "-file", str(tls / "broker.pem"),
             "-keystore", str(store), *common)  # fmt: skip


class Broker:
    """One single-node KRaft broker bound to a work directory; restartable on the same port.

    The port, controller port and data survive ``stop()``/``kill()`` followed by ``start()``, so
    "broker restarted mid-stream" is a real restart with recovery of the same log dirs.

    Parameters
    ----------
    workdir
        Directory for config, data, log and pid; created if missing. An existing directory from an
        earlier run is reused (its ports are read from ``broker.json``).
    port
        Client port; a free one below the ephemeral range when omitted.
    kafka_dir
        Folder with ``pom.xml``, ``log4j2.properties``, ``server.properties.template`` and ``lib/``.
    heap
        JVM ``-Xmx`` value.
    die_with_parent
        Ask Linux to SIGTERM the broker when the starting thread dies (fixtures: no stray JVM
        after a crashed test run). The command line turns this off to detach the broker.
    quick_jit
        Run the JVM with the C1 compiler only (``-XX:TieredStopAtLevel=1``). Measured here it
        halves the storage-format time, starts ~20 % faster and takes ~35 MB less memory; peak
        throughput is lower, so benchmarks should pass False.
    security
        ``"plaintext"`` or ``"sasl_ssl"``: the client port then requires TLS and a SCRAM-SHA-512
        login (see the module docstring and ``client_security()``). Fixed when the work directory
        is first used; None means the directory's mode (``"plaintext"`` for a new directory).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        port: int | None = None,
        *,
        kafka_dir: Path = KAFKA_DIR,
        heap: str = "512m",
        die_with_parent: bool = True,
        quick_jit: bool = True,
        security: str | None = None,
    ) -> None:
        if security is not None and security not in SECURITY_MODES:
            raise BrokerError(f"security={security!r} is not one of {', '.join(SECURITY_MODES)}.")
        self.workdir = Path(workdir).resolve()
        self.kafka_dir = Path(kafka_dir).resolve()
        self.heap = heap
        self.die_with_parent = die_with_parent
        self.quick_jit = quick_jit
        self._proc: subprocess.Popen[bytes] | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        loaded = self._load_saved()
        if loaded is not None:
            if port is not None and port != loaded["port"]:
                raise BrokerError(
                    f"{self.workdir} already holds a broker on port {loaded['port']}, not {port}."
                )
            held = str(loaded.get("security", "plaintext"))
            if security is not None and security != held:
                raise BrokerError(
                    f"{self.workdir} already holds a {held} broker, not a {security} one."
                )
            security, saved = held, loaded
        else:
            security = security or "plaintext"
            saved = self._new_saved(port, security)
        self.port, self.controller_port = int(saved["port"]), int(saved["controller_port"])
        self.security = security
        self._saved = saved

    def _new_saved(self, port: int | None, security: str) -> dict[str, Any]:
        """Choose the ports (and, when secured, the passwords) of a new work dir; save them."""
        client = port if port is not None else free_port()
        controller = free_port(exclude=(client,))
        saved: dict[str, Any] = {"port": client, "controller_port": controller}
        path = self.workdir / "broker.json"
        if security == "plaintext":  # a plaintext broker.json stays as it always was
            path.write_text(json.dumps(saved) + "\n")
            return saved
        saved.update(
            security=security,
            internal_port=free_port(exclude=(client, controller)),
            sasl_password=secrets.token_urlsafe(18),
            store_password=secrets.token_urlsafe(18),
        )
        path.touch(mode=0o600)
        path.write_text(json.dumps(saved) + "\n")
        return saved

    # -- paths and state

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"{HOST}:{self.port}"

    @property
    def internal_port(self) -> int | None:
        """The PLAINTEXT inter-broker/probe port of a ``sasl_ssl`` broker (None for plaintext)."""
        port = self._saved.get("internal_port")
        return int(port) if port is not None else None

    @property
    def ca_file(self) -> Path | None:
        """The PEM CA certificate clients trust (``ssl_cafile``), None for a plaintext broker."""
        return self.workdir / "tls" / "ca.pem" if self.security == "sasl_ssl" else None

    def client_security(self, password: str | None = None) -> dict[str, str]:
        """The kafka-python settings that reach the client port (empty for plaintext).

        ``password`` replaces the user's real password (to test a refused login).
        """
        if self.security == "plaintext":
            return {}
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SASL_MECHANISM,
            "sasl_plain_username": SASL_USER,
            "sasl_plain_password": self._saved["sasl_password"] if password is None else password,
            "ssl_cafile": str(self.ca_file),
        }

    @property
    def log_path(self) -> Path:
        """The broker's stdout/stderr (appended across restarts)."""
        return self.workdir / "kafka.out"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (from our child or from ``DIR/pid``)."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        pid = _read_pid(self.workdir)
        return pid if pid is not None and _is_our_broker(pid, self.workdir) else None

    def is_running(self) -> bool:
        """Tell whether the broker process is alive."""
        return self.pid is not None

    def rss_kib(self) -> int | None:
        """Resident memory of the broker JVM in KiB (Linux), or None when it is not running."""
        pid = self.pid
        if pid is None:
            return None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def log_tail(self) -> str:
        """The last few thousand characters of the broker log."""
        return _log_tail(self.log_path)

    def _load_saved(self) -> dict[str, Any] | None:
        path = self.workdir / "broker.json"
        if not path.is_file():
            return None
        saved: dict[str, Any] = json.loads(path.read_text())
        return saved

    def _java_cmd(self) -> list[str]:
        return [
            _java(),
            *(["-XX:TieredStopAtLevel=1"] if self.quick_jit else []),
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.kafka_dir / 'log4j2.properties'}",
            "-cp",
            str(self.kafka_dir / "lib" / "*"),  # the JVM expands the '*'; no shell involved
        ]

    # -- lifecycle

    def _write_config(self) -> Path:
        props = self.workdir / "server.properties"
        template = (self.kafka_dir / "server.properties.template").read_text()
        text = render_properties(
            template,
            port=self.port,
            controller_port=self.controller_port,
            log_dir=self.workdir / "data",
        )
        if self.security == "sasl_ssl":
            assert self.internal_port is not None
            tls = self.workdir / "tls"
            password = str(self._saved["store_password"])
            if not (tls / "broker.p12").is_file() or not (tls / "ca.pem").is_file():
                make_tls_material(tls, password)
            text = secure_properties(
                text,
                port=self.port,
                internal_port=self.internal_port,
                controller_port=self.controller_port,
                tls=tls,
                password=password,
            )
        if self.security != "plaintext":
            props.touch(mode=0o600)  # holds the keystore password
        props.write_text(text)
        return props

    def _format(self, props: Path) -> None:
        if (self.workdir / "data" / "meta.properties").is_file():
            return  # formatted by an earlier start: keep the data (restart)
        cmd = self._java_cmd() + [
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            new_cluster_id(),
            "--config",
            str(props),
        ]
        if self.security == "sasl_ssl":  # KRaft: SCRAM users are written at format time
            password = self._saved["sasl_password"]
            cmd += ["--add-scram", f"{SASL_MECHANISM}=[name={SASL_USER},password={password}]"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
        if done.returncode != 0:
            raise BrokerError(
                f"Formatting the Kafka storage in {self.workdir / 'data'} failed "
                f"(exit {done.returncode}):\n{(done.stdout + done.stderr)[-_LOG_TAIL_CHARS:]}"
            )

    def start(self, timeout: float = 120.0) -> str:
        """Start (or restart) the broker, wait until it serves metadata, return the bootstrap.

        Raises ``BrokerError`` with the tail of the broker log when it exits or is not ready
        within ``timeout`` seconds; a broker that did not become ready is killed.
        """
        if self.is_running():
            raise BrokerError(f"The broker in {self.workdir} is already running (pid {self.pid}).")
        ports = [(self.port, "client"), (self.controller_port, "controller")]
        if self.internal_port is not None:
            ports.append((self.internal_port, "internal"))
        for p, what in ports:
            if not _port_is_free(p):
                raise BrokerError(f"The Kafka {what} port {HOST}:{p} is already in use.")
        ensure_jars(self.kafka_dir)
        props = self._write_config()
        self._format(props)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [*self._java_cmd(), "kafka.Kafka", str(props)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # own session: no terminal signals; detachable
                preexec_fn=_parent_death_signal() if self.die_with_parent else None,
            )
        (self.workdir / "pid").write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready(offset, time.monotonic() + timeout)
        except BaseException:
            self.kill()
            raise
        (self.workdir / "bootstrap").write_text(self.bootstrap + "\n")
        return self.bootstrap

    def _wait_ready(self, log_offset: int, deadline: float) -> None:
        assert self._proc is not None
        logged = False
        # A secured client port cannot be probed with plain sockets: probe the internal one.
        probe_port = self.internal_port if self.internal_port is not None else self.port
        while True:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"The Kafka broker in {self.workdir} exited with code {self._proc.returncode} "
                    f"while starting; end of {self.log_path}:\n{_log_tail(self.log_path, log_offset)}"
                )
            if not logged:
                logged = READY_MESSAGE in _read_from(self.log_path, log_offset)
            if logged:
                with contextlib.suppress(OSError):
                    if any(p == probe_port for _, _, p in probe_metadata(HOST, probe_port, 2.0)):
                        if probe_port == self.port:
                            return
                        socket.create_connection((HOST, self.port), timeout=2.0).close()
                        return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"The Kafka broker in {self.workdir} was not ready in time; "
                    f"end of {self.log_path}:\n{_log_tail(self.log_path, log_offset)}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> None:
        """Shut down cleanly (SIGTERM runs Kafka's shutdown hook); SIGKILL after ``timeout``."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the broker with SIGKILL, as a crash would; the next start recovers the logs."""
        self._signal_and_wait(signal.SIGKILL, 30.0)

    def restart(self, timeout: float = 120.0) -> str:
        """Stop cleanly and start again on the same port and data; return the bootstrap."""
        self.stop()
        return self.start(timeout)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        else:
            pid = self.pid
            if pid is not None:
                _signal_foreign(pid, self.workdir, sig, timeout)
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "pid").unlink()


def _read_pid(workdir: Path) -> int | None:
    try:
        return int((workdir / "pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _is_our_broker(pid: int, workdir: Path) -> bool:
    """Guard against a recycled pid: the process must be kafka.Kafka with this dir's config."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in argv and str(workdir / "server.properties").encode() in argv


def _signal_foreign(pid: int, workdir: Path, sig: signal.Signals, timeout: float) -> None:
    """Signal a broker that is not our child (started by another process) and wait for it.

    We cannot ``wait()`` for a process we did not start, so we poll ``/proc`` until it is gone
    (or a zombie waiting for its own parent); SIGKILL follows when ``timeout`` passes.
    """

    def alive() -> bool:
        if not _is_our_broker(pid, workdir):
            return False
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while alive():
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30.0
        time.sleep(0.1)


# --------------------------------------------------------------------------- module API


def start(
    workdir: str | os.PathLike[str],
    port: int | None = None,
    *,
    timeout: float = 120.0,
    heap: str = "512m",
    die_with_parent: bool = True,
    quick_jit: bool = True,
    security: str | None = None,
) -> Broker:
    """Create a ``Broker`` in ``workdir``, start it and return it (see ``Broker.start``)."""
    broker = Broker(
        workdir,
        port,
        heap=heap,
        die_with_parent=die_with_parent,
        quick_jit=quick_jit,
        security=security,
    )
    broker.start(timeout)
    return broker


def stop(workdir: str | os.PathLike[str], timeout: float = 60.0) -> bool:
    """Stop the broker recorded in ``workdir/pid``; return False when none was running."""
    path = Path(workdir).resolve()
    pid = _read_pid(path)
    if pid is None or not _is_our_broker(pid, path):
        with contextlib.suppress(FileNotFoundError):
            (path / "pid").unlink()
        return False
    _signal_foreign(pid, path, signal.SIGTERM, timeout)
    with contextlib.suppress(FileNotFoundError):
        (path / "pid").unlink()
    return True


@contextlib.contextmanager
def running_broker(
    workdir: str | os.PathLike[str] | None = None, port: int | None = None
) -> Iterator[str]:
    """Run a broker for the ``with`` block and yield its bootstrap string.

    Without ``workdir`` a temporary directory is used and removed afterwards; a given
    ``workdir`` is kept (its data and log stay for inspection or a later restart).
    """
    temp = workdir is None
    root = Path(tempfile.mkdtemp(prefix="kafka-")) if workdir is None else Path(workdir)
    broker = Broker(root, port)
    try:
        yield broker.start()
    finally:
        broker.stop()
        if temp:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- command line


def _cmd_fetch(args: argparse.Namespace) -> int:
    began = time.monotonic()
    lib = ensure_jars(Path(args.kafka_dir))
    print(f"{lib} ({len(list(lib.glob('*.jar')))} jars, {time.monotonic() - began:.1f} s)")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    broker = Broker(
        args.dir,
        args.port,
        kafka_dir=Path(args.kafka_dir),
        heap=args.heap,
        die_with_parent=False,
        quick_jit=not args.full_jit,
        security=args.security,
    )
    print(broker.start(args.timeout))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    if not stop(args.dir, args.timeout):
        print(f"no broker running in {args.dir}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    broker = Broker(args.dir, kafka_dir=Path(args.kafka_dir))
    if not broker.is_running():
        print(f"stopped ({broker.workdir})")
        return 1
    print(
        f"running pid={broker.pid} bootstrap={broker.bootstrap} rss_kib={broker.rss_kib()}"
        + ("" if broker.security == "plaintext" else f" security={broker.security}")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python scripts/kafka_broker.py``."""
    parser = argparse.ArgumentParser(prog="kafka_broker.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka-dir", default=str(KAFKA_DIR), help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fetch the broker jars with Maven (no-op when present)")
    p = sub.add_parser("start", help="start a detached broker and print host:port")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--port", type=int)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--heap", default="512m", help="JVM -Xmx (default 512m)")
    p.add_argument("--full-jit", action="store_true", help="C2 JIT too (for benchmarks)")
    p.add_argument(
        "--security",
        choices=SECURITY_MODES,
        help="plaintext (default for a new DIR) or sasl_ssl: the client port requires TLS + SCRAM-SHA-512 (password in DIR/broker.json)",
    )
    p = sub.add_parser("stop", help="stop the broker of --dir (SIGTERM, then SIGKILL)")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("status", help="tell whether the broker of --dir runs")
    p.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "fetch": _cmd_fetch,
        "start": _cmd_start,
        "stop": _cmd_stop,
        "status": _cmd_status,
    }
    try:
        return commands[args.command](args)
    except BrokerError as err:
        print(f"kafka_broker.py {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
