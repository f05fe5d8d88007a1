-- Paired statistics as SQL macros, created with the views (storage/db.py): the numbers of `coderflow compare`.

-- Two-sided exact McNemar p-value from the discordant counts: b samples only A gets right, c only B.
-- Under H0 they split Binomial(b + c, 1/2): p = min(1, 2 P(X <= min(b, c))).
CREATE OR REPLACE MACRO mcnemar_p(b, c) AS least(1.0, 2 * list_sum(list_transform(
    range(least(b, c) + 1),
    lambda i: exp(lgamma(b + c + 1) - lgamma(i + 1) - lgamma(b + c - i + 1) - (b + c) * ln(2))
)));

-- The labelled samples two (run, method) pairs both classified, paired by shots (-1: zero-shot) and image: the same
-- dataset, split, sample key and image content hash (a null hash, from an older coderflow, matches by the rest);
-- of several seeds, the first. tasks/evaluate/compare.py pairs through this macro.
CREATE OR REPLACE MACRO paired_predictions(run_a, method_a, run_b, method_b) AS TABLE
WITH a AS (
    SELECT dataset, split, sample_key, coalesce(shots, -1) AS shots, any_value(image_hash) AS image_hash,
           any_value(label) AS label, arg_min(pred, coalesce(seed, -1)) AS pred
    FROM predictions WHERE run_id = run_a AND method = method_a AND label IS NOT NULL GROUP BY ALL
), b AS (
    SELECT dataset, split, sample_key, coalesce(shots, -1) AS shots, any_value(image_hash) AS image_hash,
           arg_min(pred, coalesce(seed, -1)) AS pred
    FROM predictions WHERE run_id = run_b AND method = method_b AND label IS NOT NULL GROUP BY ALL
)
SELECT a.shots, a.sample_key, a.label, a.pred AS pred_a, b.pred AS pred_b
FROM a JOIN b USING (dataset, split, sample_key, shots)
WHERE coalesce(a.image_hash = b.image_hash, true)
ORDER BY a.shots, a.sample_key;

-- Per shots: n, both accuracies, their difference with a percentile bootstrap 95% interval (`resamples` resamples of
-- the pairs, drawn with DuckDB's hash of (random_seed, resample, position): deterministic, not numpy's generator, so the
-- interval agrees with `coderflow compare` to Monte Carlo error) and the exact McNemar p-value.
CREATE OR REPLACE MACRO paired_comparison(run_a, method_a, run_b, method_b, resamples := 1000, random_seed := 0) AS TABLE
WITH p AS (
    SELECT shots,
           CAST(row_number() OVER (PARTITION BY shots ORDER BY sample_key) - 1 AS UBIGINT) AS i,
           CAST(count(*) OVER (PARTITION BY shots) AS UBIGINT) AS n,
           CAST(pred_a = label AS INTEGER) AS ca, CAST(pred_b = label AS INTEGER) AS cb
    FROM paired_predictions(run_a, method_a, run_b, method_b)
), sizes AS (
    SELECT shots, any_value(n) AS n FROM p GROUP BY shots
), draws AS (
    SELECT s.shots, r.r, hash(random_seed, r.r, k.k) % s.n AS i
    FROM sizes s, range(resamples) r(r), LATERAL range(CAST(s.n AS BIGINT)) k(k)
), boot AS (
    SELECT d.shots, d.r, avg(p.ca - p.cb) AS diff FROM draws d JOIN p USING (shots, i) GROUP BY d.shots, d.r
), ci AS (
    SELECT shots, quantile_cont(diff, 0.025) AS ci_low, quantile_cont(diff, 0.975) AS ci_high FROM boot GROUP BY shots
), stats AS (
    SELECT shots, count(*) AS n, avg(ca) AS accuracy_a, avg(cb) AS accuracy_b,
           CAST(sum(ca * (1 - cb)) AS BIGINT) AS only_a, CAST(sum(cb * (1 - ca)) AS BIGINT) AS only_b
    FROM p GROUP BY shots
)
SELECT nullif(s.shots, -1) AS shots, s.n, s.accuracy_a, s.accuracy_b, s.accuracy_a - s.accuracy_b AS difference,
       ci.ci_low, ci.ci_high, mcnemar_p(s.only_a, s.only_b) AS p_value, s.only_a, s.only_b
FROM stats s LEFT JOIN ci USING (shots)
ORDER BY s.shots;
