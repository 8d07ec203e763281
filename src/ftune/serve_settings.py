"""What `ftune serve` may be asked and may hold, declared once: each field is a flag of `ftune serve` (max_texts is
--max-texts) with this default, these bounds and this description as its --help (ftune.cli_options). Plain pydantic,
no web framework: the CLI builds its flags from it before anything is served."""

from __future__ import annotations

import resource
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftune import safe_yaml
from ftune.errors import ConfigError


class ServeSettings(BaseModel):
    """Limits and switches of a served model (ftune.serve.create_app). A value out of bounds is one ConfigError
    naming its flag."""

    model_config = ConfigDict(extra="forbid")

    max_texts: int = Field(64, ge=1, description="texts per request")
    max_chars: int = Field(10_000, ge=1, description="characters per text")
    max_batch: int = Field(64, ge=1, description="texts per forward pass")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a request waits for others to batch with")
    max_waiting: int = Field(1024, ge=1, description="texts (causal-lm: requests) queued before requests get 503")
    batching: bool = Field(True, description="micro-batch concurrent requests")
    mixed_adapters: bool = Field(False, description="several LoRA runs of one base model: their texts share forward "
                                                    "passes, each through its own adapter (slower on CPU)")
    api_key: str | None = Field(None, description="require this key (or set FTUNE_API_KEY)",
                                json_schema_extra={"envvar": "FTUNE_API_KEY"})
    timeout_s: float = Field(30.0, gt=0, description="seconds before an unanswered request gets 504 (its texts are "
                                                     "dropped if not yet started)")
    max_body_bytes: int | None = Field(None, ge=1, description="request body size before 413 (default: room for "
                                                               "--max-texts texts of --max-chars)")
    read_timeout_s: float = Field(10.0, ge=0.1, description="seconds a client has to send a request's headers (else "
                                                            "cut off), then its body (408)")
    max_connections: int | None = Field(None, ge=1, description="open connections; more are closed at once "
                                                                "(default: 512, fewer if ulimit -n is low)")
    allowed_hosts: list[str] | None = Field(None, description="comma-separated Host header names or *.example.com "
                                                              "patterns (default: localhost names on loopback, else "
                                                              "any)")
    max_new_tokens: int = Field(512, ge=1, description="causal-lm: tokens an answer may have (max_tokens above it: "
                                                       "400)")
    max_prompt_chars: int = Field(50_000, ge=1, description="causal-lm: characters in a request's messages")

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as e:  # one line naming the flag, as every other serve setting error
            error = e.errors()[0]
            flag = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else "ftune serve"
            raise ConfigError(f"{flag}: {error['msg']} (got {safe_yaml.short(error.get('input'))})") from None

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        """The flag's one comma-separated value as a list; an empty one as none."""
        if isinstance(value, str):
            return [host.strip() for host in value.split(",")] if value else None
        return value

    @model_validator(mode="after")
    def _check(self) -> ServeSettings:
        # ConfigError is no ValueError: pydantic lets it through as it is, with its own message
        if self.api_key is not None:
            check_api_key(self.api_key)
        self.max_connections = connection_limit(self.max_connections)
        for pattern in self.allowed_hosts or []:
            if "*" in pattern[1:] or pattern.startswith("*") and pattern != "*" and not pattern.startswith("*."):
                raise ConfigError(f"--allowed-hosts: '{pattern}' is neither a host name nor a pattern like "
                                  f"*.example.com; fix or remove it")
        return self

    def body_limit(self, chat: bool = False) -> int:
        """Bytes a request body may have: --max-body-bytes, else room for max_texts texts of max_chars characters
        (the chat API: for max_prompt_chars characters of messages)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        # 6 bytes a character: json.dumps (and most clients) escape every non-ASCII character as \uXXXX
        return (self.max_prompt_chars if chat else self.max_texts * self.max_chars) * 6 + 65_536


def check_api_key(key: str) -> None:
    if not key.strip():  # e.g. --api-key "$KEY" with KEY unset: it would look protected and let anyone in
        raise ConfigError("--api-key / FTUNE_API_KEY is empty; pass a key (e.g. from `openssl rand -hex 32`), "
                          "or drop --api-key and unset FTUNE_API_KEY to serve without one")
    if not (key.isascii() and key.isprintable()) or " " in key:
        raise ConfigError("--api-key / FTUNE_API_KEY contains spaces or characters outside printable ASCII, which an "
                          "'Authorization: Bearer' header cannot carry; use letters, digits and punctuation")


def room_for_connections() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (1 << 20 if soft == resource.RLIM_INFINITY else soft) - 128  # the model, its libraries and the log


def connection_limit(asked: int | None) -> int:
    # Every connection holds a file descriptor, and asyncio accepts a whole backlog of connections before any of
    # them can be refused: half the open-file limit for open connections, the other half for that backlog.
    room = room_for_connections() // 2
    if asked is None:
        return max(1, min(512, room))
    if asked > room:
        raise ConfigError(f"--max-connections {asked}: the open-file limit (ulimit -n) leaves room for {room}; "
                          f"lower --max-connections or raise `ulimit -n`")
    return asked
