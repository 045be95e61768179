-- Regulated mode (issue 13): a key's requests are regulated (1) or not (0).
ALTER TABLE keys ADD COLUMN regulated BIGINT NOT NULL DEFAULT 0;

-- Envelope encryption at rest: one data key per tenant, kept only wrapped
-- (AES-256-GCM under the master key of `[regulated] master_key_env` or
-- `master_key_file`; base64 of nonce || ciphertext+tag). `master_id` names
-- the master key that wrapped it (a fingerprint, never the key), so a
-- server started with another master key says so instead of failing to
-- open every value.
CREATE TABLE IF NOT EXISTS tenant_data_keys (
    tenant TEXT PRIMARY KEY,
    wrapped TEXT NOT NULL,
    master_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
