-- The guard on answer windows per key (issue 14): 1 on, 0 off; NULL: the
-- route's `[stream] guard`.
ALTER TABLE keys ADD COLUMN stream_guard BIGINT;
