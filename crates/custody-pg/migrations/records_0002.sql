-- Erasure: the (collection, id) of every record replaced by a tombstone. A tombstone keeps
-- no field, term or subject; reads and creates at its id answer `erased`.
CREATE TABLE IF NOT EXISTS tombstones (
    collection text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    PRIMARY KEY (collection, id)
);
