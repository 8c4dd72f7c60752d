-- Schema version 1 of a uctx team pool (docs/format.md, "The team pool on PostgreSQL").
-- {dim} is replaced by the encoder's dimension when the pool is created.

CREATE TABLE uctx_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Slice ids and the pool-wide write counter: many writers draw from it, none collide.
CREATE SEQUENCE uctx_slice_id AS bigint MINVALUE 1;

CREATE TABLE uctx_slices (
    id            bigint PRIMARY KEY,
    namespace     text     NOT NULL,
    source        smallint NOT NULL,
    tokens        integer  NOT NULL,
    turn          bigint   NOT NULL,
    ext_id        text,
    time_ms       bigint   NOT NULL,
    bytes         bigint   NOT NULL,
    salience      real     NOT NULL,
    uses          integer  NOT NULL DEFAULT 0,
    last_used_seq bigint   NOT NULL,
    pinned        boolean  NOT NULL DEFAULT false,
    text_len      integer  NOT NULL,
    text_z        bytea    NOT NULL,
    scale         real     NOT NULL,
    embedding     halfvec({dim}) NOT NULL,
    tsv           tsvector NOT NULL
);

CREATE INDEX uctx_slices_namespace ON uctx_slices (namespace, id);
CREATE INDEX uctx_slices_embedding ON uctx_slices USING hnsw (embedding halfvec_cosine_ops);
CREATE INDEX uctx_slices_tsv ON uctx_slices USING gin (tsv);
