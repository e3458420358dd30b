-- The food database: search, barcodes, the dataset's keys, and what the popular list is
-- computed from (docs/foods.md).

CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS unaccent;

-- English stemming, accents ignored: "Crème" and "creme" are one word.
CREATE TEXT SEARCH CONFIGURATION food_search (COPY = english);
ALTER TEXT SEARCH CONFIGURATION food_search
    ALTER MAPPING FOR hword, hword_part, word WITH unaccent, english_stem;

-- Where an imported food came from (source, source_id: "usda-sr28", its NDB number),
-- so that importing a file again updates rather than duplicates. NULL for contributions.
ALTER TABLE foods
    ADD COLUMN source    text,
    ADD COLUMN source_id text,
    ADD CONSTRAINT foods_source_key UNIQUE (source, source_id),
    ADD CONSTRAINT foods_source_pair CHECK ((source IS NULL) = (source_id IS NULL)),
    -- GTIN-8, or GTIN-13 (a UPC-A is stored in its 13-digit EAN form).
    ADD CONSTRAINT foods_barcode_form CHECK (barcode ~ '^([0-9]{8}|[0-9]{13})$'),
    -- The food's own name (before the first comma, in USDA's style) weighs most, then
    -- the rest of the name, then the brand.
    ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('food_search', split_part(name, ',', 1)), 'A')
        || setweight(to_tsvector('food_search',
                                 substr(name, length(split_part(name, ',', 1)) + 2)), 'B')
        || setweight(to_tsvector('food_search', coalesce(brand, '')), 'C')
    ) STORED;
CREATE UNIQUE INDEX foods_barcode ON foods (barcode) WHERE barcode IS NOT NULL;
-- Foods change seldom (an import, a contribution) and are searched all the time: no
-- pending list, which every search would scan until vacuum flushed it.
CREATE INDEX foods_search ON foods USING gin (search_vector) WITH (fastupdate = off);
CREATE INDEX foods_recent ON foods (created_at DESC, id) WHERE verified;

-- Every lexeme of every food, for typo correction: a query word that is no lexeme's
-- prefix is matched against this small table by trigram similarity, and the closest
-- lexemes join the query. Words are never removed: a stale one matches nothing.
-- Byte order ("C"), so that the words a prefix starts are one range of the key.
CREATE TABLE food_words (word text COLLATE "C" PRIMARY KEY);
CREATE INDEX food_words_trgm ON food_words USING gin (word gin_trgm_ops);

CREATE FUNCTION food_words_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO food_words (word)
    SELECT DISTINCT unnest(tsvector_to_array(search_vector)) FROM changed_foods
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER food_words_insert AFTER INSERT ON foods
    REFERENCING NEW TABLE AS changed_foods
    FOR EACH STATEMENT EXECUTE FUNCTION food_words_add();
CREATE TRIGGER food_words_update AFTER UPDATE ON foods
    REFERENCING NEW TABLE AS changed_foods
    FOR EACH STATEMENT EXECUTE FUNCTION food_words_add();

-- The popular list. A group commit notes each document it wrote to (one row per
-- document, whatever the number of writes); the aggregator takes the notes, reads
-- those documents' food_logs, and replaces their counts.
CREATE TABLE food_log_changes (
    doc_id bigint PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE
);
CREATE TABLE food_log_counts (
    doc_id  bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    food_id uuid NOT NULL,
    day     date NOT NULL,
    logs    integer NOT NULL CHECK (logs > 0),
    PRIMARY KEY (doc_id, food_id, day)
);
CREATE INDEX food_log_counts_day ON food_log_counts (day, food_id);
