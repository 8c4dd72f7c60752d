-- Schema version 2 of a uctx team pool (docs/format.md, "The team pool on PostgreSQL"):
-- the conversations of `uctx serve`, shared by every server on the pool.

-- One line of a server's conversation index a row (JSON, as a directory pool's
-- serve-sessions.jsonl holds it), in the order they were committed.
CREATE TABLE uctx_serve_journal (
    seq   bigserial PRIMARY KEY,
    entry text NOT NULL
);

-- A number for each server that starts on the pool: its conversation ids and
-- namespaces are its own.
CREATE SEQUENCE uctx_serve_instance AS bigint MINVALUE 1;
