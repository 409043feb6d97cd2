"""Every setting of the service, read once from `BERTSERVE_*` environment variables and validated at start."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BERTSERVE_", extra="ignore")

    # --- server ---
    host: str = Field("127.0.0.1", description="Address to bind (use 0.0.0.0 inside containers).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    grpc_port: int = Field(
        8081, ge=0, le=65535, description="TCP port of the Open Inference Protocol over gRPC "
        "(inference.GRPCInferenceService, as KServe's and Triton's); 0: no gRPC. Same keys, TLS and models as HTTP.",
    )
    grpc_idle_timeout_s: float = Field(
        30.0, gt=0, description="A gRPC connection with no call under way for this long is closed (GOAWAY; a "
        "client reconnects at its next call), so idle connections do not hold the connection cap "
        "(BERTSERVE_MAX_CONNECTIONS, which gRPC holds to as HTTP does).",
    )
    workers: int = Field(1, ge=1, description="Uvicorn worker processes; each loads every model.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object per line with request_id; text: for reading in a terminal."
    )
    access_log: bool = Field(False, description="One log line per request: method, path, status, duration.")
    ssl_certfile: Path | None = Field(None, description="PEM certificate: serve HTTPS when set with the key.")
    ssl_keyfile: Path | None = Field(None, description="PEM private key for ssl_certfile.")
    metrics_dir: Path | None = Field(
        None, description="Folder for multi-worker metric files: created if missing; at start bertserve clears the "
        "metric files it wrote there before and refuses a folder holding anything else; never removed. Default: a "
        "new temp folder, removed at exit.",
    )

    # --- models and engine ---
    model_repository: Path = Field(Path("models"), description="Folder holding <name>/<version>/ models.")
    default_model: str | None = Field(
        None, description="Model answering requests that name none, when several are served. A name the "
        "repository does not have is logged (warning), listed as failed in /models and keeps readiness at 503.",
    )
    poll_interval_s: float = Field(
        10.0, ge=0, description="Seconds between repository scans that load new and unload removed versions; 0: off."
    )
    max_loaded_versions: int = Field(
        2, ge=1, description="Most versions of one model its version policy keeps loaded (the highest selected). "
        "Versions given a traffic weight or named as shadow in serving.json load besides them: they lift the cap.",
    )
    provider: Literal["auto", "cpu", "openvino", "cuda"] = Field(
        "auto", description="auto: among the engines that pass the golden gate, measured at load, the fastest or a "
        "more faithful one within BERTSERVE_FIDELITY_MARGIN (CUDA first where onnxruntime has it; on CPU, "
        "onnxruntime's CPU provider on the INT8 artifact and OpenVINO's own runtime on the fp32 one); cpu, openvino, "
        "cuda: that one only, or the model fails to load with the reason.",
    )
    fidelity_margin: float = Field(
        0.05, ge=0, le=1, description="Among engines that pass the golden gate, the one most faithful to the golden "
        "outputs (the most of their decisions made too; equally faithful ones in the fixed order) serves unless a "
        "less faithful one is faster by more than this fraction and by more than the measurement's confidence "
        "margin (at least 25 %: below it the gap is noise); 1: always the most faithful, "
        "0: the fastest whenever the gap is beyond the confidence margin.",
    )
    openvino_precision: Literal["auto", "f32", "bf16"] = Field(
        "auto", description="Precision OpenVINO computes fp32 graphs in; auto: OpenVINO's own default (bf16 where the "
        "CPU has AMX or AVX512-BF16, else f32). A CPU without bf16 runs f32 whatever is asked; /models says which ran.",
    )
    engine_cache: Path | None = Field(
        None, description="Folder recording each version's engine choice per host (CPU, cores, layout, runtimes, "
        "artifact digests), so every start and worker serves the same engine; measured again when any of those "
        "changes or on `bertserve engines --remeasure`. Default: .engine-cache in the model repository, or a "
        "temp folder when the repository is read-only.",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="Intra-op threads per session; 0 = the worker's cores / sessions (OpenVINO: all of them)."
    )
    engine_sessions: int = Field(
        0, ge=0, description="onnxruntime sessions per model version and worker, running batches in parallel; "
        "0 = one per core of the worker's share (single-thread sessions beat one multi-thread session on CPU); "
        "OpenVINO and CUDA always use one (two OpenVINO sessions in one process do not run in parallel: measured).",
    )

    # --- batching and admission ---
    max_batch_size: int = Field(32, ge=1, description="Upper bound on sequences per engine call.")
    max_batch_tokens: int = Field(
        16384, ge=1, description="Upper bound on padded tokens (longest sequence x batch size) per engine call."
    )
    max_batch_padding: float = Field(
        0.05, ge=0, description="A sequence joins a batch only while the batch's padding stays within this "
        "fraction of its real tokens (on CPU a batch of 2 runs as fast per sequence as one of 4, so padding is "
        "pure loss); on CUDA, unless set, there is no such cap."
    )
    batch_autotune: bool = Field(
        True, description="At warm-up, measure the engine and lower the batch caps to the fastest shape."
    )
    batch_latency_budget_ms: float = Field(
        150.0, gt=0, description="Autotune keeps only batch shapes whose engine time (on one per-core session) stays "
        "within this bound. Those sessions run only under load, where batches of 4 full-length sequences beat "
        "batches of 1 (50 ms allowed only 1 on a 2-core CPU: measured, README Performance).",
    )
    max_queue_size: int = Field(
        512, ge=1, description="Limit on queued + running sequences per model and worker; past it: 429."
    )
    max_client_batch_size: int = Field(32, ge=1, description="Most inputs accepted in one request.")
    max_rerank_documents: int = Field(
        512, ge=1, description="Most documents in one rerank request (/rerank, /v1/rerank, /v2/rerank), in place "
        "of BERTSERVE_MAX_CLIENT_BATCH_SIZE; past it: 422. Its distinct documents must also fit "
        "BERTSERVE_MAX_QUEUE_SIZE (else 422: it could never be queued).",
    )
    max_request_sequences: int = Field(
        256, ge=1, description="Most sequences one request may make the model score, counted before any is queued: "
        "a long text's windows (truncate false) times its texts, a zero-shot request's texts times its candidate "
        "labels; past it: 422. Never above BERTSERVE_MAX_QUEUE_SIZE (the smaller of the two applies).",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body; past it: 413.")
    request_timeout_ms: int = Field(
        30_000, ge=1, description="Per-request deadline: past it the work is dropped and the answer is 504."
    )
    max_request_timeout_ms: int = Field(
        120_000, ge=1, description="Upper bound on the timeout_ms a request may ask for."
    )
    drain_timeout_s: float = Field(
        20.0, ge=0, description="On SIGTERM, how long accepted work may take to finish before exit; what is still "
        "running then is answered 503 (`unhealthy`); 0: no drain."
    )

    # --- security ---
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated client keys, accepted as `Authorization: Bearer <key>` on /predict, /models and "
        "the /v2 model routes; a key may be given as `sha256:<hex>` of the key; several allow rotation. Unset "
        "(and no keys file): those routes are open; set but holding no key (\"\" or \",\"): refuses to start.",
    )
    api_keys_file: Path | None = Field(
        None, description="File with one client key (or sha256:<hex>) per line; blank lines and lines starting "
        "with # are ignored; a file holding no key refuses to start.",
    )
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated admin keys (or sha256:<hex>): the only keys accepted on /admin (model load "
        "and unload), and accepted on client routes too. Unset (and no file): the admin routes are not served; set "
        "but holding no key: refuses to start.",
    )
    admin_api_keys_file: Path | None = Field(
        None, description="File with one admin key (or sha256:<hex>) per line; blank lines and # comments are "
        "ignored; a file holding no key refuses to start.",
    )
    admin_without_key: bool = Field(
        False, description="Serve the admin routes with no key when no admin key is set: only on a trusted "
        "network; logged as a warning at start.",
    )
    protect_metrics: bool = Field(
        False, description="Require a client or admin key on /metrics too (health stays open)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS; empty: CORS off."
    )

    # --- audit ---
    audit_log: str | None = Field(
        None, description="Control-plane audit log (README: Audit log): each worker appends JSON lines, hash-chained, "
        "to <path>.<pid>; `-`: standard output (one worker); unset: off.",
    )
    audit_hmac_key_file: Path | None = Field(
        None, description="File holding the key of the HMAC that names callers in the audit log by key fingerprint; "
        "unset: one is generated once beside the log (<log>-hmac-key, mode 0600; outside the glob <log>.*). Needed "
        "with BERTSERVE_AUDIT_LOG=-.",
    )
    audit_log_max_bytes: int = Field(
        100 * 2**20, ge=0, description="A worker's audit file passing this size is rotated (<file>.1 ...; the chain "
        "goes on in the new file); 0: never rotated.",
    )
    audit_log_max_files: int = Field(5, ge=1, description="Rotated audit files kept per worker; older ones deleted.")
    audit_required: bool = Field(
        False, description="Refuse to start when the audit log cannot be opened, and refuse admin calls (503) while "
        "their audit record cannot be written. Predictions and repository changes never wait for the audit log.",
    )

    # --- prediction log and feedback (app.prediction_log; README: Prediction log and feedback) ---
    prediction_log_dir: Path | None = Field(
        None, description="Folder of the prediction log: each worker appends JSON lines to predictions-<pid>.jsonl "
        "(rotated), beside the join index feedback reads (index.sqlite3, shared by all workers); unset: no file "
        "sink and no POST /feedback.",
    )
    prediction_log_url: str | None = Field(
        None, description="HTTP sink: each record POSTed as one CloudEvent in binary mode (ce-* headers, the record "
        "as JSON body), as KServe's logger sends; from a background sender, never retried; unset: none.",
    )
    prediction_log_sample: float | None = Field(
        None, ge=0, le=1, description="Share of answered requests logged (0-1), a model's serving.json "
        "prediction_log.sample overriding it; unset: 1 when a sink is set.",
    )
    prediction_log_text: Literal["none", "hash", "full"] = Field(
        "none", description="What of the texts is logged: none; hash (HMAC-SHA256 under a key shared by all "
        "workers: repeats countable, text not stored); full (the texts: personal data, an explicit choice). A "
        "model's serving.json prediction_log.text overrides it.",
    )
    prediction_log_hash_key_file: Path | None = Field(
        None, description="Key of the text hashes (and of the key fingerprints of feedback when the audit log is "
        "off); unset: one generated once in BERTSERVE_PREDICTION_LOG_DIR (.hash-key, mode 0600).",
    )
    prediction_log_max_bytes: int = Field(
        100 * 2**20, ge=1024, description="A worker's log file passing this size is rotated (.jsonl.1 ...).",
    )
    prediction_log_max_files: int = Field(5, ge=1, description="Rotated log files kept per worker file.")
    prediction_log_format: Literal["jsonl", "parquet"] = Field(
        "jsonl", description="The folder's file format: jsonl (one JSON object per line); parquet (needs pyarrow: "
        "the `parquet` extra; a worker's file is readable once finished, past MAX_BYTES or 10 minutes after its first "
        "record, and finished files are kept within MAX_BYTES x MAX_FILES per worker).",
    )

    @field_validator("prediction_log_format")
    @classmethod
    def _parquet_needs_pyarrow(cls, value: str) -> str:
        if value == "parquet":
            try:
                import pyarrow.parquet  # noqa: F401 - only checked: the writer imports it again
            except ImportError:
                raise ValueError("parquet needs pyarrow, which is not installed: pip install 'bertserve[parquet]' "
                                 "(or BERTSERVE_PREDICTION_LOG_FORMAT=jsonl)") from None
        return value
    prediction_log_queue_size: int = Field(
        1024, ge=1, description="Records waiting for the writer, per worker; past it a record is dropped (counted "
        "in bertserve_prediction_log_dropped_total, reason queue_full): requests never wait for the log. Each holds "
        "its request's texts until written, so this bounds the log's memory (at most this many request bodies).",
    )
    feedback_window_s: float = Field(
        7 * 86400.0, gt=0, description="How long a logged prediction takes feedback (POST /feedback) and how long "
        "feedback counts in live_quality; older rows of the join index are purged.",
    )

    # --- HTTP transport ---
    request_read_timeout_s: float = Field(
        20.0, gt=0, description="A request's head and body must have arrived this many seconds after its first "
        "byte (after the connection opened, for its first request); past it: 408, or the connection is closed. "
        "Idle keep-alive connections close after 5 s (uvicorn).",
    )
    max_header_bytes: int = Field(
        32768, ge=1024, description="Largest request head (request line and headers); past it: 431 and close."
    )
    max_headers: int = Field(100, ge=1, description="Most header fields in one request; past it: 431 and close.")
    max_connections: int = Field(
        0, ge=0, description="Open connections per worker; past it a new connection is answered 503 and closed. "
        "0: the open-file limit less a reserve for model, metric and repository files (max(64, limit/8)), at "
        "most 4096; the value is logged at start.",
    )

    @field_validator("api_keys", "admin_api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    def key_digests(self, role: Literal["client", "admin"] = "client") -> list[bytes]:
        """SHA-256 digests of every key of a role (settings and key file): keys given as `sha256:<hex>` as they
        are, plain keys hashed. A presented key is hashed once and compared in constant time with each."""
        given, file = (self.api_keys, self.api_keys_file) if role == "client" else (
            self.admin_api_keys, self.admin_api_keys_file)
        keys = [k.get_secret_value() for k in given] + (_file_keys(file) if file else [])
        return [_digest(k) for k in keys]

    @model_validator(mode="after")
    def _check_keys(self) -> "Settings":
        # Fail closed: a keys setting or file that is given but yields no key (an unpopulated Secret, ",") is a
        # mistake, never a wish for open routes; only leaving both unset opens them.
        for role, field, file, name in (("client", "api_keys", self.api_keys_file, "API_KEYS"),
                                        ("admin", "admin_api_keys", self.admin_api_keys_file, "ADMIN_API_KEYS")):
            if file is not None and not file.is_file():
                raise ValueError(f"BERTSERVE_{name}_FILE {file} is not a readable file")
            if field in self.model_fields_set and not getattr(self, field):
                raise ValueError(f"BERTSERVE_{name} is set but holds no key: give at least one key, or unset it")
            try:
                from_file = _file_keys(file) if file is not None else None
                self.key_digests(role)  # type: ignore[arg-type]
            except ValueError as exc:
                raise ValueError(f"BERTSERVE_{name} (or _FILE): {exc}") from None
            if from_file == []:
                raise ValueError(f"BERTSERVE_{name}_FILE {file} holds no key (only blank lines or # comments): "
                                 "give at least one key, or unset it")
        if self.admin_without_key and (self.admin_api_keys or self.admin_api_keys_file):
            raise ValueError("BERTSERVE_ADMIN_WITHOUT_KEY contradicts BERTSERVE_ADMIN_API_KEYS: set one of them")
        return self

    @property
    def request_sequences_cap(self) -> int:
        """The per-request sequence cap in force: BERTSERVE_MAX_REQUEST_SEQUENCES within the queue bound."""
        return min(self.max_request_sequences, self.max_queue_size)

    @model_validator(mode="after")
    def _check_combinations(self) -> "Settings":
        if self.max_queue_size < self.max_client_batch_size:
            raise ValueError(
                "BERTSERVE_MAX_QUEUE_SIZE must be at least BERTSERVE_MAX_CLIENT_BATCH_SIZE, "
                "or a full-size request could never be accepted"
            )
        if self.audit_log == "-" and self.audit_hmac_key_file is None:
            raise ValueError("BERTSERVE_AUDIT_LOG=- needs BERTSERVE_AUDIT_HMAC_KEY_FILE (standard output has no "
                             "folder to keep a generated key in)")
        if self.audit_required and not self.audit_log:
            raise ValueError("BERTSERVE_AUDIT_REQUIRED needs BERTSERVE_AUDIT_LOG")
        if (self.prediction_log_text == "hash" and self.prediction_log_dir is None and self.prediction_log_url
                and self.prediction_log_hash_key_file is None):
            raise ValueError("BERTSERVE_PREDICTION_LOG_TEXT=hash with only BERTSERVE_PREDICTION_LOG_URL needs "
                             "BERTSERVE_PREDICTION_LOG_HASH_KEY_FILE (every worker and restart must hash with one key; "
                             "without BERTSERVE_PREDICTION_LOG_DIR there is no folder to keep a generated one in)")
        if self.prediction_log_hash_key_file is not None and not self.prediction_log_hash_key_file.is_file():
            raise ValueError(f"BERTSERVE_PREDICTION_LOG_HASH_KEY_FILE {self.prediction_log_hash_key_file} is not a "
                             "readable file")
        if self.prediction_log_url is not None and not self.prediction_log_url.startswith(("http://", "https://")):
            raise ValueError("BERTSERVE_PREDICTION_LOG_URL must be an http:// or https:// URL")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("BERTSERVE_SSL_CERTFILE and BERTSERVE_SSL_KEYFILE go together")
        return self

    def engine_layout(self, provider: str = "cpu") -> tuple[int, int]:
        """(sessions, intra-op threads per session) of one model version: the worker's share of the cores, split
        into single-thread onnxruntime CPU sessions, or one OpenVINO session using all of them."""
        cores = max(1, (os.cpu_count() or 1) // self.workers)
        if provider != "cpu":
            return 1, self.intra_op_threads or cores
        if self.engine_sessions:
            return self.engine_sessions, self.intra_op_threads or max(1, cores // self.engine_sessions)
        if self.intra_op_threads:
            return max(1, cores // self.intra_op_threads), self.intra_op_threads
        return cores, 1


def settings_or_exit(**overrides) -> Settings:
    """Settings from BERTSERVE_* variables (and overrides: command-line options) for a command line: a bad value
    stops the command here, with one line naming each, and exit status 2."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix for a ValueError we raised
            # A field's own error names it; one across fields (a model validator) names its fields in the message.
            field = "_".join(str(p) for p in error["loc"]).upper()
            where = f"setting BERTSERVE_{field}" if field else "settings"
            print(f"bertserve: bad {where}: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def _file_keys(file: Path) -> list[str]:
    """The keys in a key file: one a line; blank lines and lines starting with # (comments) are not keys."""
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is not a readable text file ({type(exc).__name__})") from None
    return [k for k in (line.strip() for line in lines) if k and not k.startswith("#")]


def _digest(key: str) -> bytes:
    """A key's SHA-256 digest; `sha256:<64 hex digits>` is taken as the digest itself. Never echoes the key."""
    if key.lower().startswith("sha256:"):
        hex_digest = key[7:]
        if len(hex_digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hex_digest):
            raise ValueError("a sha256: key must be followed by 64 hex digits")
        return bytes.fromhex(hex_digest)
    return hashlib.sha256(key.encode()).digest()
