-- Stream analysers per key (issue 14): how a virtual key's answers are
-- analysed ("off", "hold_back", "stream_first", "buffer_full"); NULL: the
-- route's `[stream]` mode.
ALTER TABLE keys ADD COLUMN stream_policy TEXT;
