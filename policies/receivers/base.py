"""The one interface every alert receiver implements, and the spec validation.

A receiver turns :class:`~driftwarden.policies.alerts.Alert` objects into one notification
and answers with a :class:`Delivery`, in the style of Alertmanager's notifiers: ``ok``, or a
failure that is ``retryable`` (connection error, timeout, HTTP 5xx or 429) or not (any other
4xx, a redirect, a payload the other side refuses). The outbox retries retryable failures and
marks the others dead. Redirects are not followed: urllib would send the POST again as a GET
without its body, and that GET's 200 is no delivery.

Receiver specs come from the ``receivers:`` block of a policy (environment variables are
already expanded)::

    oncall:  {type: alertmanager, url: "http://127.0.0.1:9093"}
    ml-team: {type: webhook, url: "https://hooks.example/ml", headers: {X-Team: ml}}
    audit:   {type: kafka, topic: driftwarden.alerts}
    debug:   {type: log}

Every type also takes ``timeout_s`` (network receivers; default 10) where it applies.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.error import HTTPError, URLError
from urllib.parse import urljoin, urlsplit
from urllib.request import HTTPRedirectHandler, Request, build_opener

if TYPE_CHECKING:
    from ..alerts import Alert

__all__ = [
    "RECEIVER_KEYS",
    "Delivery",
    "Receiver",
    "default_idempotency_key",
    "post_json",
    "validate_receiver_spec",
]

DEFAULT_TIMEOUT_S = 10.0

# The keys each receiver type accepts (``type`` included); anything else is an error.
RECEIVER_KEYS: Mapping[str, frozenset[str]] = {
    "alertmanager": frozenset({"type", "url", "timeout_s"}),
    "webhook": frozenset({"type", "url", "timeout_s", "headers"}),
    "kafka": frozenset({"type", "topic", "timeout_s"}),
    "log": frozenset({"type"}),
}


@dataclass(frozen=True)
class Delivery:
    """The outcome of one send: ``ok``, or a failure that is ``retryable`` or not."""

    ok: bool
    retryable: bool = False
    error: str | None = None

    @classmethod
    def success(cls) -> Delivery:
        """A delivered notification."""
        return cls(ok=True, retryable=False, error=None)

    @classmethod
    def retry(cls, error: str) -> Delivery:
        """A failure worth trying again later."""
        return cls(ok=False, retryable=True, error=error)

    @classmethod
    def dead(cls, error: str) -> Delivery:
        """A failure that will not go away by retrying."""
        return cls(ok=False, retryable=False, error=error)


class Receiver(ABC):
    """Sends alerts somewhere. ``name`` is the receiver's name in the policy.

    ``wants_resends`` says whether active alerts must be re-sent periodically
    (:meth:`~driftwarden.policies.alerts.AlertBook.due_resends`): true only for Alertmanager,
    which forgets an alert whose ``endsAt`` passed. Webhook, Kafka and log receivers get a
    firing notification once and a resolved one once.
    """

    type: str = ""
    wants_resends: bool = False

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def send(self, alerts: Sequence[Alert], *, key: str | None = None) -> Delivery:
        """Deliver ``alerts`` as one notification.

        ``key`` is the idempotency key of the notification (the outbox job key); receivers
        that can pass it on do (the webhook's ``Idempotency-Key`` header). ``None`` derives a
        key from the alerts (:func:`default_idempotency_key`). Never raises for delivery
        problems: they come back as a failed :class:`Delivery`.
        """

    def close(self) -> None:  # noqa: B027  (optional hook, most receivers hold nothing)
        """Release what the receiver holds (nothing by default)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def default_idempotency_key(alerts: Sequence[Alert]) -> str:
    """A key that is the same for the same alerts in the same state."""
    parts = [
        [a.fingerprint, a.status, a.starts_at, a.ends_at]
        for a in sorted(alerts, key=lambda a: a.fingerprint)
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _check_url(name: str, spec: Mapping[str, Any], errors: list[str]) -> None:
    url = spec.get("url")
    if url is None or url == "":
        errors.append(f"receiver {name!r} of type {spec.get('type')} needs a url.")
        return
    if not isinstance(url, str):
        errors.append(f"receiver {name!r} has a url that is not a string.")
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        errors.append(
            f"receiver {name!r} has the url {url!r}; only http:// and https:// urls are allowed."
        )
    elif not parts.hostname:
        errors.append(f"receiver {name!r} has the url {url!r}, which names no host.")


def validate_receiver_spec(name: str, spec: Any) -> list[str]:
    """Every problem with one receiver spec, one plain sentence each (empty if it is good)."""
    if not isinstance(spec, Mapping):
        return [f"receiver {name!r} must be a mapping with a type."]
    kind = spec.get("type")
    if kind not in RECEIVER_KEYS:
        return [
            f"receiver {name!r} has the unknown type {kind!r}; known types: "
            f"{', '.join(sorted(RECEIVER_KEYS))}."
        ]
    kind = str(kind)
    errors = [
        f"receiver {name!r} of type {kind} has the unknown key {k!r}."
        for k in sorted(set(spec) - RECEIVER_KEYS[kind], key=str)
    ]
    if kind in ("alertmanager", "webhook"):
        _check_url(name, spec, errors)
    if "timeout_s" in spec:
        t = spec["timeout_s"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 300:
            errors.append(f"receiver {name!r} has timeout_s {t!r}; expected seconds in (0, 300].")
    if kind == "kafka" and "topic" in spec:
        topic = spec["topic"]
        if not isinstance(topic, str) or not topic:
            errors.append(f"receiver {name!r} has a topic that is not a non-empty string.")
    if kind == "webhook" and "headers" in spec:
        headers = spec["headers"]
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            errors.append(f"receiver {name!r} has headers that are not a string-to-string map.")
    return errors


def classify_status(status: int, where: str) -> Delivery:
    """Alertmanager's rule: 2xx ok; 429 and 5xx retryable; any other status is final."""
    if 200 <= status < 300:
        return Delivery.success()
    error = f"{where} answered HTTP {status}."
    if status == 429 or status >= 500:
        return Delivery.retry(error)
    return Delivery.dead(error)


class _NoRedirects(HTTPRedirectHandler):
    """Answer a redirect with an ``HTTPError`` (its 3xx) instead of following it: urllib turns
    a POST redirected by 301/302/303 into a GET without the body, whose 200 (any page) would
    count as delivered though the alert reached no one."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = build_opener(_NoRedirects)


def post_json(
    url: str, body: Any, *, headers: Mapping[str, str] | None = None, timeout_s: float
) -> Delivery:
    """POST ``body`` as JSON to ``url`` and classify the answer (never raises on I/O)."""
    data = json.dumps(body, separators=(",", ":")).encode()
    req = Request(url, data=data, method="POST")  # noqa: S310  (scheme checked at build time)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            resp.read()
            return classify_status(resp.status, url)
    except HTTPError as exc:
        if 300 <= exc.code < 400:
            # Final, as any status but 2xx, 429 and 5xx (classify_status): a url that moved
            # does not come back by retrying; the operator fixes the receiver's url.
            location = exc.headers.get("Location") if exc.headers is not None else None
            target = urljoin(url, location) if location else "no Location given"
            return Delivery.dead(
                f"{url} answered HTTP {exc.code}, a redirect ({target}); redirects are not "
                "followed (the alert would arrive as a GET without its body): set the "
                "receiver's url to the final address."
            )
        detail = ""
        try:
            detail = exc.read(300).decode("utf-8", "replace").strip()
        except OSError:
            pass
        d = classify_status(exc.code, url)
        return Delivery(d.ok, d.retryable, f"{d.error} {detail}".strip() if detail else d.error)
    except (URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Delivery.retry(f"could not reach {url}: {reason}.")
