-- Distribution shift of few-shot runs (fewshot.test_datasets): test top-1 per method, shots and test set, mean
-- over seeds; role 'source' is the run's own dataset (support set and search), 'target' a shifted test set.
SELECT m.run_id, m.method, m.shots, m.dataset,
       CASE WHEN m.dataset = r.dataset THEN 'source' ELSE 'target' END AS role,
       count(*)      AS seeds,
       avg(m.value)  AS top1_mean
FROM metrics m JOIN runs r USING (run_id)
WHERE m.metric = 'top1' AND m.class_index IS NULL
  AND m.run_id IN (SELECT run_id FROM metrics m2 JOIN runs r2 USING (run_id) WHERE m2.dataset <> r2.dataset)
GROUP BY ALL
ORDER BY m.run_id, m.method, m.shots NULLS FIRST, role DESC, m.dataset;
