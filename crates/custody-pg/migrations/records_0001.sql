-- Record storage: opaque stored records (postcard bytes, sealed fields inside), blind-index
-- entries and principals. No key material ever lives in this schema.
CREATE TABLE IF NOT EXISTS records (
    collection text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    -- The subject the record is about: the distribution column when sharded by subject.
    subject text COLLATE "C" NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX IF NOT EXISTS records_subject ON records (subject);
CREATE TABLE IF NOT EXISTS blind_index (
    collection text COLLATE "C" NOT NULL,
    field text COLLATE "C" NOT NULL,
    term bytea NOT NULL,
    id text COLLATE "C" NOT NULL,
    PRIMARY KEY (collection, field, term, id)
);
CREATE TABLE IF NOT EXISTS principals (
    id text COLLATE "C" PRIMARY KEY,
    body bytea NOT NULL
);
