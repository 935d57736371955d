-- The transparency log's storage: write-ahead frames as an append-only byte stream (one row
-- per appended frame, keyed by its byte offset), tiles at their coordinates, one checkpoint.
CREATE TABLE IF NOT EXISTS frames (
    start bigint PRIMARY KEY,
    data bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS tiles (
    -- The hash-tile level, or -1 for entry bundles.
    level smallint NOT NULL,
    idx bigint NOT NULL,
    width smallint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (level, idx, width)
);
CREATE TABLE IF NOT EXISTS checkpoint (
    id smallint PRIMARY KEY CHECK (id = 0),
    body bytea NOT NULL
);
