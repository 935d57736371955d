-- Key storage, apart from records: wrapped subject DEKs (or their tombstones) and wrapped
-- system keys. Destroying a subject's row state here is what crypto-shredding means.
CREATE TABLE IF NOT EXISTS subject_keys (
    subject text COLLATE "C" PRIMARY KEY,
    state bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS system_keys (
    name text COLLATE "C" PRIMARY KEY,
    wrapped bytea NOT NULL
);
