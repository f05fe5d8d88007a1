-- The `leaderboard` view: one row per suite cell, method and shots (zero-shot: shots NULL). top1_mean / top1_std over
-- the seeds of the cell's run (metrics); delta_vs_clip, its paired bootstrap 95% interval and the exact McNemar p from
-- suite_stats (suites/<suite_id>/stats.parquet, written when the suite ends: NULL until then, and for clip itself).
-- A failed cell is one row with status 'failed' and NULL figures.
WITH top1 AS (
    SELECT run_id, method, shots, seed, value FROM metrics WHERE metric = 'top1' AND class_index IS NULL
), counted AS (
    SELECT run_id, method, shots, CAST(max(value) AS INTEGER) AS n
    FROM metrics WHERE metric = 'n_samples' AND class_index IS NULL GROUP BY ALL
), done AS (
    SELECT c.suite_id, c.cell_id, c.run_id, c.dataset, c.model_id, c.textbank_id, c.status, t.method, t.shots,
           CAST(count(DISTINCT coalesce(t.seed, -1)) AS INTEGER) AS n_seeds, avg(t.value) AS top1_mean,
           stddev_samp(t.value) AS top1_std
    FROM suite_cells c JOIN top1 t USING (run_id)
    WHERE c.status <> 'failed'
    GROUP BY ALL
)
SELECT d.suite_id, d.dataset, d.model_id, d.textbank_id, d.method, d.shots, d.n_seeds, d.top1_mean, d.top1_std,
       s.delta_vs_clip, s.ci_low, s.ci_high, s.p_value, coalesce(n.n, s.n_samples) AS n_samples, d.status,
       d.cell_id, d.run_id
FROM done d
LEFT JOIN suite_stats s
    ON s.suite_id = d.suite_id AND s.cell_id = d.cell_id AND s.method = d.method AND s.shots IS NOT DISTINCT FROM d.shots
LEFT JOIN counted n ON n.run_id = d.run_id AND n.method = d.method AND n.shots IS NOT DISTINCT FROM d.shots
UNION ALL
SELECT suite_id, dataset, model_id, textbank_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, status,
       cell_id, run_id
FROM suite_cells WHERE status = 'failed'
