-- The log's sequencer: one row naming the node that holds the sequencer lease (an advisory
-- lock) and its epoch. Every write to the log's tables checks the epoch under a row lock, so a
-- node that lost the lease cannot append after another took over (fencing).
CREATE TABLE IF NOT EXISTS leader (
    id smallint PRIMARY KEY CHECK (id = 0),
    epoch bigint NOT NULL,
    url text NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
