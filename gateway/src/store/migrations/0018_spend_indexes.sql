-- The spend log's write cost (issue 12's throughput target): every index is
-- one more B-tree insert per request. `spend_model_at` served no query: the
-- reports group by model over a time range (`spend_at`), and the budgets'
-- rebuild filters by key, team or tenant, never by model.
DROP INDEX IF EXISTS spend_model_at;
