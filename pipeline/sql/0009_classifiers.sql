-- Classifiers trained on a source's stored vectors (lead scoring, triage), kept as data like segments:
-- any worker and any SQL caller scores with them, nothing lives on one machine's disk.
--
-- A classifier is a name over a row source and a label (a column or an SQL expression of the row).
-- Each training makes a version: one weight vector and intercept per class of a linear model on the
-- unit vectors (multinomial logistic regression; a binary one is stored as two classes, the first with
-- zero weights), so that the class probabilities are softmax(weight · embedding + intercept), in SQL.
-- `pipeline.predictions` holds the active version's verdict for each row, written by the worker in the
-- transaction that writes the row's vector.

create table if not exists pipeline.classifiers (
    name text primary key check (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    source text not null references pipeline.sources (name) on delete cascade,
    -- an SQL expression over the source's row (a column name, or e.g. `status = 'ganho'`)
    label_expression text not null,
    -- the class whose probability is "the score" (`/ml/score-lead`); null for more than two classes
    positive text,
    active_version int,
    created_at timestamptz not null default now()
);
create index if not exists classifiers_source_idx on pipeline.classifiers (source);

create table if not exists pipeline.classifier_versions (
    classifier text not null references pipeline.classifiers (name) on delete cascade,
    version int not null,
    -- the embedding model whose vectors it was trained on: another model's vectors are not scored
    model text not null,
    classes text[] not null,
    counts int[] not null,
    -- cross-validated accuracy, macro-F1 and the regularisation chosen
    metrics jsonb not null default '{}',
    params jsonb not null default '{}',
    n_rows int not null,
    trained_at timestamptz not null default now(),
    primary key (classifier, version)
);

create table if not exists pipeline.classifier_weights (
    classifier text not null,
    version int not null,
    position int not null,
    label text not null,
    weight vector not null,
    intercept float8 not null,
    primary key (classifier, version, position),
    foreign key (classifier, version) references pipeline.classifier_versions (classifier, version) on delete cascade
);

create table if not exists pipeline.predictions (
    source text not null,
    row_key text not null,
    classifier text not null references pipeline.classifiers (name) on delete cascade,
    label text not null,
    probability real not null,
    -- every class's probability, {"hot": 0.91, "cold": 0.09}
    probabilities jsonb not null,
    version int not null,
    scored_at timestamptz not null default now(),
    primary key (classifier, row_key)
);
create index if not exists predictions_source_idx on pipeline.predictions (source, row_key);
