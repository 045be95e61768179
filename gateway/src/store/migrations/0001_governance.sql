-- Keys, teams, budgets, spend and audit: one schema for SQLite and
-- PostgreSQL (portable types only: TEXT, BIGINT, DOUBLE PRECISION; flags
-- are BIGINT 0/1; times are milliseconds since the Unix epoch; lists are
-- JSON arrays in TEXT).

CREATE TABLE IF NOT EXISTS teams (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    allowed_models TEXT,
    rpm BIGINT,
    tpm BIGINT,
    max_parallel BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A virtual key `sk-sl-<prefix>_<secret>` is kept as its public prefix and
-- the HMAC-SHA256 of the whole key under the server's pepper (hex).
CREATE TABLE IF NOT EXISTS keys (
    prefix TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    name TEXT,
    tenant TEXT NOT NULL,
    team TEXT,
    user_id TEXT,
    roles TEXT NOT NULL,
    allowed_models TEXT,
    rpm BIGINT,
    tpm BIGINT,
    max_parallel BIGINT,
    sensitive BIGINT NOT NULL DEFAULT 0,
    guard_policy TEXT,
    expires_at BIGINT,
    revoke_at BIGINT,
    blocked BIGINT NOT NULL DEFAULT 0,
    rotated_from TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_team ON keys (team);
CREATE INDEX IF NOT EXISTS keys_tenant ON keys (tenant);

-- scope: key | team | tenant; target: the key's prefix, the team's id or
-- the tenant's name. period: day | month | calendar_month.
CREATE TABLE IF NOT EXISTS budgets (
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    amount DOUBLE PRECISION NOT NULL,
    currency TEXT NOT NULL,
    period TEXT NOT NULL,
    alert_thresholds TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope, target)
);

-- One row per alert sent: an alert goes out once per budget, period and threshold.
CREATE TABLE IF NOT EXISTS budget_alerts (
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    threshold_pct BIGINT NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (scope, target, period_start, threshold_pct)
);

-- One row per request. cost is in the configured currency at the serving
-- deployment's price; reference_cost at the configured reference cloud price
-- (the savings report).
CREATE TABLE IF NOT EXISTS spend (
    request_id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    key_prefix TEXT,
    tenant TEXT NOT NULL,
    team TEXT,
    user_id TEXT,
    model TEXT NOT NULL,
    deployment TEXT,
    tokens_in BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cost DOUBLE PRECISION NOT NULL,
    reference_cost DOUBLE PRECISION NOT NULL,
    cache_hit BIGINT NOT NULL,
    local BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_at ON spend (at_ms);
CREATE INDEX IF NOT EXISTS spend_key_at ON spend (key_prefix, at_ms);
CREATE INDEX IF NOT EXISTS spend_team_at ON spend (team, at_ms);
CREATE INDEX IF NOT EXISTS spend_tenant_at ON spend (tenant, at_ms);
CREATE INDEX IF NOT EXISTS spend_model_at ON spend (model, at_ms);

-- The audit log: each record carries the hash of the one before it.
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    request_id TEXT,
    actor TEXT NOT NULL,
    tenant TEXT,
    source TEXT,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms);
