-- Sessions: stored responses (`/v1/responses`) and conversations
-- (`/v1/conversations`), one row each, with their items in order. Same
-- portable types as 0001 (TEXT, BIGINT; times in ms since the epoch).
--
-- kind: response | conversation. version: bumped by every change (an
-- append, a metadata update); an append that names a stale version is
-- refused. last_seq: the seq of the last item appended. user_id: whom the content is about, for erasure; body: the
-- response object or the conversation's metadata (JSON, or an encrypted
-- envelope). parent: a response's previous_response_id.
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    user_id TEXT,
    kind TEXT NOT NULL,
    version BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    parent TEXT,
    conversation TEXT,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_tenant_user ON sessions (tenant, user_id);
CREATE INDEX IF NOT EXISTS sessions_updated ON sessions (updated_at);

-- seq: the item's place in its session, from 1. idempotency_key: a retried
-- append of the same item finds its row instead of writing a second one.
CREATE TABLE IF NOT EXISTS session_items (
    session_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    item_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, seq),
    UNIQUE (session_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS session_items_item ON session_items (session_id, item_id);
