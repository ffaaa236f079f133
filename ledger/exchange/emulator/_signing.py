"""Bybit's request authentication: API key, timestamp window and HMAC signature (guide.mdx)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_RECV_WINDOW", "Refusal", "Signing"]

DEFAULT_RECV_WINDOW = 5000
# guide.mdx: server_time - recv_window <= timestamp < server_time + 1000
_AHEAD_MS = 1000


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: Bybit's retCode, retMsg and the HTTP status."""

    code: int
    message: str
    status: int = 200


class Signing:
    """Checks a private request as Bybit does: the key (10003), the timestamp (10002), then,
    when the emulator knows the secret, the signature (10004)."""

    def __init__(
        self, *, api_key: str | None, api_secret: str | None, check_timestamps: bool
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.check_timestamps = check_timestamps

    def key_ok(self, key: str) -> bool:
        return bool(key) and (self.api_key is None or key == self.api_key)

    def check_http(self, headers: Mapping[str, str], payload: str, now_ms: int) -> Refusal | None:
        """`payload` is the raw query string (GET) or the raw JSON body (POST)."""
        key = headers.get("X-BAPI-API-KEY", "")
        if not self.key_ok(key):
            return Refusal(10003, "API key is invalid.", status=401)
        stamp = headers.get("X-BAPI-TIMESTAMP", "")
        window = headers.get("X-BAPI-RECV-WINDOW", "") or str(DEFAULT_RECV_WINDOW)
        if self.check_timestamps:
            refusal = self._check_time(stamp, window, now_ms)
            if refusal is not None:
                return refusal
        if self.api_secret is not None:
            expected = self._sign(stamp + key + window + payload)
            if not hmac.compare_digest(expected, headers.get("X-BAPI-SIGN", "")):
                return Refusal(
                    10004, "Error sign, please check your signature generation algorithm."
                )
        return None

    def check_ws_auth(self, args: list[str], now_ms: int) -> str | None:
        """The private stream's auth op, args [key, expires, signature]; an error or None."""
        key, expires, signature = [*args, "", "", ""][:3]
        if not self.key_ok(key):
            return "Params Error"
        if self.check_timestamps:
            try:
                if int(expires) <= now_ms:
                    return "Request expired"
            except ValueError:
                return "Params Error"
        if self.api_secret is not None and not hmac.compare_digest(
            self._sign("GET/realtime" + expires), signature
        ):
            return "Invalid signature"
        return None

    def _check_time(self, stamp: str, window: str, now_ms: int) -> Refusal | None:
        try:
            timestamp, recv_window = int(stamp), int(window)
        except ValueError:
            return Refusal(10002, "invalid request, please check your server timestamp")
        if not now_ms - recv_window <= timestamp < now_ms + _AHEAD_MS:
            return Refusal(
                10002,
                "invalid request, please check your server timestamp or recv_window param. "
                f"req_timestamp[{timestamp}],server_timestamp[{now_ms}],"
                f"recv_window[{recv_window}]",
            )
        return None

    def _sign(self, text: str) -> str:
        assert self.api_secret is not None
        return hmac.new(self.api_secret.encode(), text.encode(), hashlib.sha256).hexdigest()
