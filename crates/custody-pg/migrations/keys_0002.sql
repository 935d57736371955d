-- Progress records kept with the keys, e.g. an interrupted KEK rotation's cursor.
CREATE TABLE IF NOT EXISTS meta (
    name text COLLATE "C" PRIMARY KEY,
    body bytea NOT NULL
);
